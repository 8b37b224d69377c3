"""Publication figures: every view on the Results page drawn with matplotlib (scanpy's
``sc.pl.dotplot`` / ``sc.pl.stacked_violin`` where they fit) and saved as vector SVG / PDF or as
PNG at a chosen dpi.

No Qt here: a figure is built on a worker thread from plain arrays and AnnData, shown on screen
as a rendered image (app.plots.figure_view) and written by :func:`save_figure`. Exports are true
vectors: matrices are drawn with ``pcolormesh`` (one path per cell, never ``imshow``), nothing is
rasterised, and SVG text stays text (``svg.fonttype = 'none'``), so a journal's editor can change
a font. Colours, legends (outside the axes, never over data) and axis labels with their units
are the same as on screen.

Units: expression is log1p(normalize_total 1e4) ("log normalised expression"); an effect is a
difference of mean log2(1 + x) between a condition and its control ("log2 fold change").
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are rendered off screen, on any thread

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FORMATS = (".svg", ".pdf", ".png")
DEFAULT_DPI = 300
EXPR_UNIT = "log normalised expression\n(log1p of counts per 10,000)"
LFC_UNIT = "log2 fold change vs control"
RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "font.size": 9, "axes.titlesize": 10,
      "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
      "font.family": "DejaVu Sans", "axes.spines.top": False, "axes.spines.right": False}
matplotlib.rcParams.update(RC)

#: Okabe-Ito + Tableau-like palette (as on screen, app.plots.common.PALETTE), 0-1 RGB.
PALETTE = [tuple(c / 255 for c in rgb) for rgb in (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
    (213, 94, 0), (240, 228, 66), (0, 0, 0), (148, 103, 189), (140, 86, 75),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229))]
CLASS_COLORS = {"up": (0.70, 0.09, 0.17), "down": (0.13, 0.40, 0.67), "ns": (0.6, 0.6, 0.6)}


# -- saving -------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``path`` (.svg, .pdf or .png at ``dpi``), atomically, with the user's
    umask (engine.export.atomic_path)."""
    from engine.export import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot save a figure as {suffix or 'a file without extension'}; "
                         "use .svg, .pdf or .png")
    if not 50 <= int(dpi) <= 1200:
        raise ValueError(f"dpi must be between 50 and 1200, not {dpi}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix != ".png":
        vectorize(fig)
    with atomic_path(path, suffix=suffix) as tmp:
        fig.savefig(tmp, format=suffix[1:], dpi=int(dpi), bbox_inches="tight",
                    metadata=_metadata(suffix))
    return path


def vectorize(fig: Figure) -> None:
    """Turn off rasterisation everywhere (matplotlib rasterises colour bars with 50 or more
    colours, scanpy's included), so an SVG or PDF holds only paths and text."""
    for artist in fig.findobj():
        if getattr(artist, "get_rasterized", None) and artist.get_rasterized():
            artist.set_rasterized(False)


def _metadata(suffix: str) -> dict:
    if suffix == ".png":
        return {"Software": "Perturb Studio"}
    return {"Creator": "Perturb Studio"}


def render_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (what the screen shows)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def screen_dpi(fig: Figure, size, *, lo: int = 60, hi: int = 160) -> int:
    """The dpi at which ``fig`` fills a widget of ``size`` (width, height in pixels)."""
    w_in, h_in = fig.get_size_inches()
    w, h = size
    return int(np.clip(min(w / max(w_in, 1e-3), h / max(h_in, 1e-3)) * 0.95, lo, hi))


def new_figure(width: float = 7.0, height: float = 4.5) -> Figure:
    """A figure not registered with pyplot (so it is freed when dropped, on any thread)."""
    return Figure(figsize=(width, height), layout="constrained")


def message_figure(text: str, *, width: float = 6, height: float = 2) -> Figure:
    fig = new_figure(width, height)
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="#444")
    return fig


def _short(label: str, limit: int = 40) -> str:
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _legend_outside(ax, handles=None, labels=None, *, title: str | None = None,
                    max_items: int = 30) -> None:
    """A legend to the right of the axes (never over the data)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) > max_items:
        handles, labels = handles[:max_items], list(labels[:max_items])
        labels[-1] = f"… and {len(handles) - max_items + 1} more"
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              title=title, markerscale=1.5, borderaxespad=0.0)


def _sym_limit(m: np.ndarray) -> float:
    m = np.asarray(m, float)
    v = np.abs(m[np.isfinite(m)])
    return float(max(np.percentile(v, 99), 1e-3)) if v.size else 1.0


# -- views that exist on screen (heatmap, UMAP, effect plot) ------------------------------------
def heatmap_figure(matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                   title: str = "", value_label: str = LFC_UNIT, cmap: str = "RdBu_r",
                   symmetric: bool = True) -> Figure:
    """``matrix``: rows x columns, drawn with pcolormesh (vector), rows top to bottom."""
    m = np.asarray(matrix, float)
    nr, nc = m.shape
    w = min(max(3.5 + 0.28 * nc, 5.0), 16.0)
    h = min(max(2.0 + 0.22 * nr, 3.0), 14.0)
    fig = new_figure(w, h)
    ax = fig.add_subplot()
    lim = _sym_limit(m)
    kw = {"vmin": -lim, "vmax": lim} if symmetric else {}
    mesh = ax.pcolormesh(np.ma.masked_invalid(m), cmap=cmap, edgecolors="face", linewidth=0,
                         **kw)
    ax.set_xlim(0, nc)
    ax.set_ylim(nr, 0)
    ax.set_xticks(np.arange(nc) + 0.5, [_short(c, 30) for c in col_labels], rotation=60,
                  ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(nr) + 0.5, [_short(r, 40) for r in row_labels])
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    cb = fig.colorbar(mesh, ax=ax, shrink=min(1.0, 6 / max(h, 1)), pad=0.02)
    cb.set_label(value_label)
    if title:
        ax.set_title(title)
    return fig


def umap_figure(coords, values, *, kind: str = "category", order: Sequence[str] | None = None,
                grey: set | None = None, title: str = "", value_label: str = "") -> Figure:
    """Cells on their UMAP coordinates, coloured by category (legend outside) or by a value
    (colour bar); grey categories (real cells) are drawn first, under the others."""
    xy = np.asarray(coords, float)
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    size = float(np.clip(3000 / max(len(xy), 1), 1.0, 12.0))
    if kind == "category":
        vals = np.asarray(values).astype(str)
        cats = list(order) if order else list(dict.fromkeys(vals))
        grey = grey or set()
        k = g = 0
        greys = [(0.75, 0.75, 0.75), (0.55, 0.55, 0.55), (0.37, 0.37, 0.37)]
        draw = [c for c in cats if c in grey] + [c for c in cats if c not in grey]
        colors = {}
        for c in cats:
            if c in grey:
                colors[c] = greys[g % len(greys)]
                g += 1
            else:
                colors[c] = PALETTE[k % len(PALETTE)]
                k += 1
        for c in draw:
            sel = vals == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colors[c], linewidths=0,
                       label=_short(c, 34), alpha=0.6 if c in grey else 0.85)
        handles, labels = ax.get_legend_handles_labels()
        by = dict(zip(labels, handles, strict=True))
        lab = [_short(c, 34) for c in cats if _short(c, 34) in by]
        _legend_outside(ax, [by[x] for x in lab], lab)
    else:
        v = np.nan_to_num(np.asarray(values, float))
        o = np.argsort(v, kind="stable")
        sc_ = ax.scatter(xy[o, 0], xy[o, 1], c=v[o], s=size, cmap="viridis", linewidths=0)
        cb = fig.colorbar(sc_, ax=ax, pad=0.02, shrink=0.8)
        cb.set_label(value_label)
    ax.set_xlabel("UMAP 1 (arbitrary units)")
    ax.set_ylabel("UMAP 2 (arbitrary units)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    return fig


def effect_figure(spec) -> Figure:
    """The effect plot (app.effect_table.PlotSpec): each gene's effect against the model's
    confidence, coloured up / down / not confident, the genes with the largest score named."""
    if spec is None or spec.message or spec.x is None:
        return message_figure(getattr(spec, "message", "") or "No effects to plot.")
    x, y = np.asarray(spec.x, float), np.asarray(spec.y, float)
    classes = np.asarray(spec.classes if spec.classes is not None else ["ns"] * len(x))
    fig = new_figure(7.0, 5.0)
    ax = fig.add_subplot()
    names = {"up": "up", "down": "down", "ns": "not confident"}
    for cls in ("ns", "down", "up"):
        sel = classes == cls
        if sel.any():
            ax.scatter(x[sel], y[sel], s=9 if cls == "ns" else 14, color=CLASS_COLORS[cls],
                       linewidths=0, label=names[cls], alpha=0.8)
    for h in spec.hlines:
        ax.axhline(h, color="#888", lw=0.8, ls="--")
    for v in spec.vlines:
        ax.axvline(v, color="#888", lw=0.8, ls="--")
    if spec.diagonal:
        lo, hi = np.nanmin([x.min(), y.min()]), np.nanmax([x.max(), y.max()])
        ax.plot([lo, hi], [lo, hi], color="#888", lw=0.8, ls="--")
    if spec.score is not None:
        _label_points(ax, x, y, list(spec.genes), np.asarray(spec.score, float), n=12)
    ax.set_xlabel(spec.xlabel or LFC_UNIT)
    ax.set_ylabel(spec.ylabel)
    if spec.title:
        ax.set_title(spec.title)
    _legend_outside(ax)
    if spec.legend:
        fig.text(0.01, 0.0, spec.legend, fontsize=7, color="#444", ha="left", va="top",
                 wrap=True)
    return fig


def _label_points(ax, x, y, genes, score, *, n: int = 10) -> list[str]:
    """Name the ``n`` points with the largest ``score``, each label nudged towards the middle
    of the plot so it stays inside the axes."""
    score = np.where(np.isfinite(score), score, -np.inf)
    top = [i for i in np.argsort(-score)[:n] if np.isfinite(score[i])]
    if not top:
        return []
    xm = np.nanmedian(x)
    named = []
    for i in top:
        right = x[i] < xm
        ax.annotate(str(genes[i]), (x[i], y[i]), xytext=(4 if right else -4, 3),
                    textcoords="offset points", ha="left" if right else "right", fontsize=7,
                    color="#222")
        named.append(str(genes[i]))
    return named


# -- new views on generated cells ----------------------------------------------------------------
def _grouped(adata, groupby: str, order: Sequence[str] | None):
    """``adata`` with ``groupby`` an ordered categorical (scanpy's plots need one)."""
    import pandas as pd

    a = adata.copy() if adata.is_view else adata
    vals = a.obs[groupby].astype(str)
    cats = [c for c in (order or list(dict.fromkeys(vals))) if c in set(vals)]
    a.obs[groupby] = pd.Categorical(vals, categories=cats, ordered=True)
    return a


def dotplot_figure(adata, genes: Sequence[str], *, groupby: str = "condition",
                   order: Sequence[str] | None = None, title: str = "") -> Figure:
    """scanpy's dot plot: per condition and gene, the fraction of cells expressing it (dot
    size) and its mean log normalised expression (colour)."""
    import scanpy as sc

    genes = [g for g in genes if g in adata.var_names]
    if not genes:
        return message_figure("None of the chosen genes is among the generated genes.")
    a = _grouped(adata, groupby, order)
    dp = sc.pl.dotplot(a, genes, groupby, show=False, return_fig=True, title=title or None,
                       colorbar_title="Mean expression\nin group (log1p CP10k)",
                       size_title="Fraction of cells\nexpressing (%)",
                       figsize=(max(5.0, 1.6 + 0.38 * len(genes) + 2.2),
                                max(2.6, 1.2 + 0.34 * len(a.obs[groupby].cat.categories))))
    dp.make_figure()
    return dp.fig


def violin_figure(adata, genes: Sequence[str], *, groupby: str = "condition",
                  order: Sequence[str] | None = None, title: str = "") -> Figure:
    """scanpy's stacked violins: one row of violins per gene, one violin per condition."""
    import scanpy as sc

    genes = [g for g in genes if g in adata.var_names]
    if not genes:
        return message_figure("None of the chosen genes is among the generated genes.")
    a = _grouped(adata, groupby, order)
    n_groups = len(a.obs[groupby].cat.categories)
    sv = sc.pl.stacked_violin(a, genes, groupby, show=False, return_fig=True, swap_axes=True,
                              title=title or None,
                              colorbar_title="Median expression\nin group (log1p CP10k)",
                              figsize=(max(4.5, 2.4 + 0.55 * n_groups),
                                       max(3.0, 1.0 + 0.45 * len(genes))))
    sv.make_figure()
    return sv.fig


def cell_heatmap_figure(adata, genes: Sequence[str], *, groupby: str = "condition",
                        order: Sequence[str] | None = None, max_per_group: int = 150,
                        seed: int = 0, title: str = "") -> Figure:
    """Every cell a column (at most ``max_per_group`` per condition, drawn at random with a
    fixed seed), grouped by condition; genes clustered (average linkage on correlation) and
    each gene scaled to 0-1 over the cells shown. Vector (pcolormesh), unlike sc.pl.heatmap
    which embeds a raster image."""
    genes = [g for g in genes if g in adata.var_names]
    if not genes:
        return message_figure("None of the chosen genes is among the generated genes.")
    vals = adata.obs[groupby].astype(str).to_numpy()
    cats = [c for c in (order or list(dict.fromkeys(vals))) if c in set(vals)]
    rng = np.random.default_rng(seed)
    rows, bounds, start = [], [], 0
    for c in cats:
        idx = np.flatnonzero(vals == c)
        if len(idx) > max_per_group:
            idx = np.sort(rng.choice(idx, max_per_group, replace=False))
        bounds.append((c, start, len(idx)))
        start += len(idx)
        rows.append(idx)
    cells = np.concatenate(rows) if rows else np.zeros(0, int)
    x = _dense(adata[cells][:, genes].X)
    lo, hi = x.min(0), x.max(0)
    z = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    order_g = cluster_order(z.T)
    z = z[:, order_g]
    genes = [genes[i] for i in order_g]
    width = min(max(6.0, 0.008 * len(cells) + 4), 10.0)
    fig = new_figure(width, min(max(3.0, 0.2 * len(genes) + 1.8), 12.0))
    gs = fig.add_gridspec(2, 1, height_ratios=[1.2, max(len(genes), 4) * 0.5])
    ax_bar = fig.add_subplot(gs[0])
    ax = fig.add_subplot(gs[1], sharex=ax_bar)
    # each group named inside its block of the bar (no legend to look up)
    chars = max(int(width * 11 / max(len(bounds), 1)), 6)
    for k, (c, start, n) in enumerate(bounds):
        col = PALETTE[k % len(PALETTE)]
        ax_bar.add_patch(matplotlib.patches.Rectangle((start, 0), n, 1, color=col))
        dark = 0.299 * col[0] + 0.587 * col[1] + 0.114 * col[2] < 0.5
        ax_bar.text(start + n / 2, 0.5, _wrap(c, chars), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax_bar.set_ylim(0, 1)
    ax_bar.set_yticks([])
    ax_bar.tick_params(labelbottom=False, length=0)
    for s in ax_bar.spines.values():
        s.set_visible(False)
    mesh = ax.pcolormesh(z.T, cmap="viridis", vmin=0, vmax=1, edgecolors="face", linewidth=0)
    for _c, start, _n in bounds[1:]:
        ax.axvline(start, color="white", lw=1.0)
    ax.set_xlim(0, len(cells))
    ax.set_ylim(len(genes), 0)
    ax.set_yticks(np.arange(len(genes)) + 0.5, genes)
    ax.set_xticks([])
    ax.set_xlabel(f"cells, grouped by condition (up to {max_per_group} per condition)")
    for s in ax.spines.values():
        s.set_visible(False)
    cb = fig.colorbar(mesh, ax=ax, pad=0.02, shrink=0.8)
    cb.set_label("expression scaled per gene\n(0 = lowest, 1 = highest cell)")
    if title:
        ax_bar.set_title(title)
    return fig


def _wrap(label: str, width: int) -> str:
    """``label`` on at most two lines of ``width`` characters (cut with an ellipsis)."""
    import textwrap

    lines = textwrap.wrap(str(label), width) or [""]
    if len(lines) > 2:
        lines = [lines[0], _short(" ".join(lines[1:]), width)]
    return "\n".join(lines)


def cluster_order(rows: np.ndarray) -> list[int]:
    """Leaf order of average-linkage clustering of ``rows`` on correlation distance."""
    n = len(rows)
    if n < 3:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage

    r = np.asarray(rows, float)
    r = r + np.random.default_rng(0).normal(0, 1e-9, r.shape)  # constant rows
    d = np.clip(1 - np.corrcoef(r), 0, 2)
    iu = np.triu_indices(n, 1)
    return [int(i) for i in leaves_list(linkage(d[iu], "average"))]


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float)


def score_violin_figure(scores, groups, *, order: Sequence[str] | None = None,
                        member_means: dict | None = None, set_name: str = "",
                        source: str = "") -> Figure:
    """Violins of a gene-set score per condition; ``member_means``: condition -> the mean score
    of each ensemble member's cells, drawn as black dots (their spread is the model's
    uncertainty about the mean score)."""
    scores = np.asarray(scores, float)
    groups = np.asarray(groups).astype(str)
    cats = [c for c in (order or list(dict.fromkeys(groups))) if c in set(groups)]
    fig = new_figure(min(max(6.0, 2.8 + 1.0 * len(cats)), 14.0), 4.4)
    ax = fig.add_subplot()
    data = [scores[groups == c] for c in cats]
    parts = ax.violinplot(data, showmedians=True, showextrema=False)
    for k, body in enumerate(parts["bodies"]):
        body.set_facecolor(PALETTE[k % len(PALETTE)])
        body.set_alpha(0.7)
        body.set_edgecolor("none")
    parts["cmedians"].set_color("#222")
    if member_means:
        first = True
        for k, c in enumerate(cats):
            mm = np.asarray(member_means.get(c, []), float)
            if len(mm) > 1:
                ax.scatter(np.full(len(mm), k + 1) + np.linspace(-0.12, 0.12, len(mm)), mm,
                           s=12, color="black", zorder=3,
                           label="mean of each ensemble member" if first else None)
                first = False
        _legend_outside(ax)
    ax.set_xticks(np.arange(1, len(cats) + 1), [_short(c, 30) for c in cats], rotation=30,
                  ha="right", rotation_mode="anchor")
    ax.set_ylabel("gene-set score\n(log normalised expression)")
    ax.set_title(f"{set_name}" + (f" ({source})" if source else ""))
    return fig


def comparison_figure(panels: Sequence[dict], *, title: str = "") -> Figure:
    """Side-by-side scatters of per-gene effects. Each panel: ``x``, ``y``, ``genes``, ``xlabel``,
    ``ylabel``, ``title`` and optionally ``yerr`` (low, high) and ``label_n`` (the genes farthest
    from the diagonal are named). A dashed diagonal marks y = x; each panel says its R²."""
    n = len(panels)
    fig = new_figure(min(4.2 * n + 0.5, 15), 4.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, p in zip(axes, panels, strict=True):
        x, y = np.asarray(p["x"], float), np.asarray(p["y"], float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        genes = [g for g, k in zip(p["genes"], ok, strict=True) if k]
        if p.get("yerr") is not None:
            lo, hi = (np.asarray(v, float)[ok] for v in p["yerr"])
            top = np.argsort(-np.abs(y))[:60]
            ax.errorbar(x[top], y[top], yerr=[y[top] - lo[top], hi[top] - y[top]], fmt="none",
                        ecolor="#bbb", lw=0.6, zorder=1, label="90% interval (largest 60)")
        dev = np.abs(y - x)
        top_n = int(p.get("label_n", 8))
        out = np.argsort(-dev)[:top_n] if len(dev) else []
        cols = np.full(len(x), "#7a7a7a", dtype=object)
        cols[list(out)] = "#b2182b"
        ax.scatter(x, y, s=8, c=list(cols), linewidths=0, zorder=2)
        if len(x):
            lo_, hi_ = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo_, hi_], [lo_, hi_], color="#555", lw=0.8, ls="--", zorder=0,
                    label="y = x")
            _annotate_apart(ax, x, y, [genes[i] for i in out], list(out))
            r2 = r_squared(x, y)
            ax.text(0.02, 0.98, f"R² = {r2:.2f}\nn = {len(x):,} genes", transform=ax.transAxes,
                    va="top", fontsize=8)
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel(p.get("ylabel", ""))
        ax.set_title(p.get("title", ""))
    if title:
        fig.suptitle(title)
    return fig


def _annotate_apart(ax, x, y, names, idx, *, fontsize: float = 7) -> None:
    """Name the points ``idx`` with labels nudged up (in steps of a line) until they do not
    overlap a label placed before (a greedy repel, in points)."""
    ax.autoscale_view()
    xy = ax.transData.transform(np.column_stack([x, y])) if len(x) else np.zeros((0, 2))
    scale = 72.0 / ax.figure.dpi                     # display pixels -> points
    boxes: list[tuple[float, float, float, float]] = []
    line = fontsize * 1.25
    order = sorted(range(len(idx)), key=lambda k: (xy[idx[k], 1], xy[idx[k], 0]))
    for k in order:
        i = idx[k]
        px, py = xy[i] * scale
        w = 0.6 * fontsize * len(names[k])
        dy = 3.0
        for _ in range(12):
            b = (px + 3, py + dy, px + 3 + w, py + dy + line)
            if not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]
                       for o in boxes):
                break
            dy += line
        boxes.append(b)
        ax.annotate(names[k], (x[i], y[i]), xytext=(3, dy), textcoords="offset points",
                    fontsize=fontsize, color="#b2182b",
                    arrowprops={"arrowstyle": "-", "color": "#d6a0a8", "lw": 0.5}
                    if dy > 3.0 else None)


def r_squared(x, y) -> float:
    """R² of ``y`` predicted by ``x`` (1 - SS_res / SS_tot around y's mean)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ss = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((y - x) ** 2).sum()) / ss


def dose_figure(doses, effects: dict, *, low: dict | None = None, high: dict | None = None,
                simulated: bool = True, title: str = "", dose_unit: str = "") -> Figure:
    """Dose-response curves: ``effects``: gene -> effect (log2) per dose, ``low`` / ``high`` the
    ensemble's 90% interval per dose (a band)."""
    d = np.asarray(doses, float)
    o = np.argsort(d)
    fig = new_figure(6.8, 4.4)
    ax = fig.add_subplot()
    for k, (g, e) in enumerate(effects.items()):
        col = PALETTE[k % len(PALETTE)]
        e = np.asarray(e, float)[o]
        ax.plot(d[o], e, "-o", color=col, ms=4, lw=1.4, label=g)
        if low and high and g in low and np.isfinite(np.asarray(low[g], float)).any():
            ax.fill_between(d[o], np.asarray(low[g], float)[o], np.asarray(high[g], float)[o],
                            color=col, alpha=0.15, lw=0)
    if len(d) and d.min() > 0 and d.max() / d.min() >= 20:
        ax.set_xscale("log")
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xlabel("dose" + (f" ({dose_unit})" if dose_unit else " (units of the training data)"))
    ax.set_ylabel(LFC_UNIT)
    head = title or "Dose response"
    if simulated:
        head += "\nSIMULATED dose model (not measured doses)"
    ax.set_title(head, color="#a15c00" if simulated else "black")
    _legend_outside(ax, title="gene (band: 90% interval)")
    return fig


def combination_grid_figure(targets: Sequence[str], size: np.ndarray, deviation: np.ndarray, *,
                            title: str = "") -> Figure:
    """Two target x target grids for pairs: the effect size of each pair (root mean square of
    its per-gene log2 fold changes) and its deviation from the additive expectation (root mean
    square of observed minus the sum of the singles). Empty cells: pair not generated."""
    n = len(targets)
    fig = new_figure(min(3.2 + 2 * (1.0 + 0.45 * n), 14), min(2.2 + 0.45 * n, 10))
    axes = fig.subplots(1, 2)
    for ax, m, lab, cmap in ((axes[0], size, "effect size (RMS log2 fold change)", "Reds"),
                             (axes[1], deviation, "deviation from additive (RMS log2)",
                              "Purples")):
        mm = np.ma.masked_invalid(np.asarray(m, float))
        mesh = ax.pcolormesh(mm, cmap=cmap, edgecolors="white", linewidth=0.5, vmin=0)
        top = float(np.nanmax(m)) if np.isfinite(m).any() else 1.0
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    ax.text(j + 0.5, i + 0.5, f"{m[i, j]:.2f}", ha="center", va="center",
                            fontsize=7, color="white" if m[i, j] > 0.6 * top else "black")
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        ax.set_xticks(np.arange(n) + 0.5, targets, rotation=60, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(np.arange(n) + 0.5, targets)
        ax.set_aspect("equal")
        cb = fig.colorbar(mesh, ax=ax, shrink=0.8, pad=0.02)
        cb.set_label(lab)
    if title:
        fig.suptitle(title)
    return fig


def any_raster(svg_text: str) -> bool:
    """True when an SVG embeds a raster image (an <image> element)."""
    return "<image" in svg_text


def finite_or(x: Any, default: float = math.nan) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default
