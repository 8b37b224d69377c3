"""The Results page's figure views on generated cells, as data and matplotlib figures (no Qt):
dot plot, stacked violins, per-cell heatmap, gene-set scores, comparisons (a double against its
singles and the additive expectation; generated vs real cells) and sweeps (dose-response curves,
combination grid). :func:`build_view` runs on a worker thread (app.controller) and returns a
:class:`ViewResult`: the figure, what it shows in words, and the numbers a test can check.

Effects here are differences of mean log normalised expression between a condition's generated
cells and its matching control's, in log2 units (as in the effect table); with an ensemble the
interval is engine.effects' calibrated 90 % interval.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import figures as F
from .figure_pathways import pathway_bar_figure

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
KINDS = ("dotplot", "violin", "cells", "genesets", "compare", "sweep", "pathways")
TITLES = {"dotplot": "Dot plot", "violin": "Violins", "cells": "Cells heatmap",
          "genesets": "Gene sets", "pathways": "Pathway tokens", "compare": "Compare",
          "sweep": "Sweep"}
#: generated latent states per condition (and per ensemble member) for the pathway-token view
PATHWAY_CELLS = 500
#: Genes shown by default (the ones that change most).
DEFAULT_GENES = 8


@dataclass(eq=False)
class ViewResult:
    kind: str
    figure: Any                              # matplotlib Figure
    note: str = ""                           # one or two plain sentences under the controls
    data: dict = field(default_factory=dict)  # numbers behind the figure (tests, sessions)
    png: bytes = b""                         # the figure rendered for the screen


# -- groups and genes ----------------------------------------------------------------------------
BEFORE = "your cells (before)"


def cells_for_views(exp):
    """The cells the views show: the generated ones; in 'perturb' mode also the user's cells
    before the perturbation (in the model's genes, log normalised over those genes as
    engine.effects_from_perturbed does; genes the data lack are 0), as the group
    :data:`BEFORE`."""
    if exp.mode != "perturb" or exp.source is None:
        return exp.adata
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from engine.analysis import log_normalized

    a, src = exp.adata, exp.source
    common = [g for g in a.var_names if g in set(src.var_names)]
    x = sp.lil_matrix((src.n_obs, a.n_vars), dtype=np.float32)
    if common:
        x[:, a.var_names.get_indexer(common)] = log_normalized(src[:, common]).toarray()
    before = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
        {"condition": BEFORE}, index=[f"before{i}" for i in range(src.n_obs)]),
        var=pd.DataFrame(index=a.var_names))
    after = ad.AnnData(a.X, obs=pd.DataFrame({"condition": a.obs["condition"].astype(str)
                                                  .to_numpy()}, index=a.obs_names),
                       var=pd.DataFrame(index=a.var_names))
    if "member" in a.obs:
        after.obs["member"] = a.obs["member"].to_numpy()
    return ad.concat([before, after], merge="same")


def group_order(exp) -> list[str]:
    """Each condition followed by its matching control (each control once)."""
    labels = exp.adata.obs["condition"].astype(str).to_numpy()
    present = list(dict.fromkeys(labels))
    out: list[str] = []
    for lab in exp.labels:
        if lab not in out:
            out.append(lab)
        if exp.mode != "perturb" and not exp.only_controls and len(exp.controls.get(lab, [])):
            ctrl = labels[exp.controls[lab][0]]
            if ctrl not in out:
                out.append(ctrl)
    if exp.mode == "perturb" and exp.source is not None:
        out.insert(0, BEFORE)
    return out + [p for p in present if p not in out]


def parse_genes(text: str, var_names) -> tuple[list[str], list[str]]:
    """Genes typed as 'A, B C' -> (found as the model spells them, not found)."""
    upper = {str(g).upper(): str(g) for g in var_names}
    found, missing = [], []
    for tok in text.replace(",", " ").replace(";", " ").split():
        g = upper.get(tok.upper())
        if g is None:
            missing.append(tok)
        elif g not in found:
            found.append(g)
    return found, missing


def _mean(adata, rows) -> np.ndarray:
    x = adata.X[rows]
    return np.asarray(x.mean(0), dtype=float).ravel()


def mean_effect(exp, label: str) -> np.ndarray:
    """log2 change of the mean of ``label`` against its control, per gene of the cells."""
    a = exp.adata
    if exp.mode == "perturb":
        from engine.analysis import log_normalized

        src = exp.source
        common = [g for g in a.var_names if g in set(src.var_names)]
        ctrl = np.zeros(a.n_vars)
        if common:
            m = log_normalized(src[:, common])
            pos = a.var_names.get_indexer(common)
            ctrl[pos] = np.asarray(m.mean(0)).ravel()
        return (_mean(a, exp.groups[label]) - ctrl) / LN2
    return (_mean(a, exp.groups[label]) - _mean(a, exp.controls[label])) / LN2


def effect_with_interval(exp, label: str):
    """(effect, low, high) in log2 per gene: the ensemble's when the model has one (NaN interval
    without), else the change of the mean."""
    res = cached_result(exp, label)
    if res is None and exp.model is not None and label in exp.conditions and \
            exp.mode == "denovo" and not exp.only_controls:
        try:
            import engine

            res = engine.effects_from_cells(exp.model, exp.adata, exp.conditions[label])
        except Exception:  # noqa: BLE001 - fall back to the change of the mean
            log.debug("no ensemble effect for %s", label, exc_info=True)
    if res is not None and list(res.genes) == list(map(str, exp.adata.var_names)):
        return res.log2fc, res.log2_low, res.log2_high
    e = mean_effect(exp, label)
    nan = np.full_like(e, np.nan)
    return e, nan, nan


def cached_result(exp, label: str):
    for (lab, _key), v in getattr(exp, "effects", {}).items():
        if lab == label and v and v[0] is not None:
            return v[0]
    return None


def default_genes(exp, top: list[str] | None = None, n: int = DEFAULT_GENES) -> list[str]:
    """The heatmap's genes that change most, else the largest mean changes of the first
    condition."""
    if top:
        return [g for g in top if g in exp.adata.var_names][:n]
    if not exp.labels:
        return []
    e = mean_effect(exp, exp.labels[0])
    return [str(exp.adata.var_names[i]) for i in np.argsort(-np.abs(e))[:n]]


# -- the views -----------------------------------------------------------------------------------
def build_view(kind: str, exp, params: dict, *, dataset=None, schema=None) -> ViewResult:
    """The figure of ``kind`` (one of KINDS) for the experiment ``exp``; ``params``: ``genes``
    (list), ``gene_set`` (engine.genesets.GeneSet), ``label`` (the condition compared),
    ``compare`` ('additive' | 'real')."""
    genes = list(params.get("genes") or default_genes(exp, params.get("top")))
    order = group_order(exp)
    cells = cells_for_views(exp) if kind in ("dotplot", "violin", "cells", "genesets") \
        else exp.adata
    title_model = f"{exp.model_name}: generated cells" if exp.model_name else "generated cells"
    if kind == "dotplot":
        fig = F.dotplot_figure(cells, genes, order=order, title=title_model)
        return ViewResult(kind, fig, f"{len(genes)} genes × {len(order)} groups of generated "
                          "cells. Dot size: fraction of cells expressing the gene; colour: "
                          "mean log normalised expression.", {"genes": genes, "groups": order})
    if kind == "violin":
        fig = F.violin_figure(cells, genes, order=order, title=title_model)
        return ViewResult(kind, fig, f"Expression of {len(genes)} genes in each group of "
                          "generated cells (one violin per group).",
                          {"genes": genes, "groups": order})
    if kind == "cells":
        genes = list(params.get("genes") or default_genes(exp, params.get("top"), 30))
        fig = F.cell_heatmap_figure(cells, genes, order=order, title=title_model)
        return ViewResult(kind, fig, "Each column is a generated cell (at most 150 per group, "
                          "drawn with a fixed seed), grouped by condition; genes clustered by "
                          "their correlation across these cells.", {"genes": genes,
                                                                   "groups": order})
    if kind == "genesets":
        return geneset_view(cells, params["gene_set"], order)
    if kind == "pathways":
        return pathway_view(exp, params.get("label") or (exp.labels[0] if exp.labels else ""))
    if kind == "compare":
        if params.get("compare") == "real":
            return real_view(exp, params.get("label") or exp.labels[0], dataset, schema)
        return additive_view(exp, params.get("label"))
    if kind == "sweep":
        return sweep_view(exp, params.get("genes"))
    raise ValueError(f"unknown view {kind!r}")


def geneset_view(cells, gene_set, order) -> ViewResult:
    from engine.genesets import COLLECTIONS, score_cells

    scores, found = score_cells(cells, gene_set)
    groups = cells.obs["condition"].astype(str).to_numpy()
    members = member_means(cells, scores)
    cite = COLLECTIONS.get(gene_set.collection, ("", gene_set.collection))[1]
    fig = F.score_violin_figure(scores, groups, order=order, member_means=members,
                                set_name=gene_set.label, source=f"{len(found)} of "
                                f"{len(gene_set.genes)} genes")
    means = {g: float(scores[groups == g].mean()) for g in order if (groups == g).any()}
    spread = ""
    if members:
        spread = (" Black dots: the mean score of each ensemble member's cells; their spread "
                  "is the model's uncertainty about the mean.")
    note = (f"{gene_set.label}: {len(found)} of its {len(gene_set.genes)} genes are among the "
            f"model's genes. Score per cell = mean expression of the set minus matched control "
            f"genes (scanpy score_genes).{spread} Source: {cite}.")
    return ViewResult("genesets", fig, note, {"scores": scores, "means": means,
                                             "found": found, "set": gene_set.label})


def pathway_view(exp, label: str) -> ViewResult:
    """Which pathway tokens move most for the condition ``label`` (engine.pathway_token_changes:
    models with the pathway-transformer backbone); for other models the figure says why it is
    not available."""
    import engine

    def unavailable(why: str) -> ViewResult:
        return ViewResult("pathways", F.message_figure(why, width=7, height=1.6), why,
                          {"available": False, "reason": why})

    model, cond = exp.model, exp.conditions.get(label)
    if model is None:
        return unavailable("Pathway tokens need the model that made these cells, and it is not "
                           "loaded (cells opened from a file or a saved session).")
    if cond is None or cond.is_control:
        return unavailable("Choose a perturbed condition: pathway token changes compare it "
                           "with its control.")
    ch = engine.pathway_token_changes(model, cond, n=PATHWAY_CELLS, seed=0)
    if not ch.available:
        return unavailable(ch.reason)
    members = ch.per_member.shape[0]
    fig = pathway_bar_figure(ch.names, ch.change, ch.spread, members=members,
                               title=f"{exp.model_name or model.name}: pathway tokens, "
                                     f"{_short_label(label)}")
    top = ch.ranked()[:3]
    spread = (f" Error bars: ± 1 sd of the change over the {members} ensemble members."
              if members > 1 else " One network: no member spread.")
    note = (f"Each token of this model is one gene set; its score is the mean log normalised "
            f"expression of the set's genes, read from the latent state by a fixed linear map "
            f"(fitted after the autoencoder; R² of the fit {min(ch.fit_r2):.2f}–"
            f"{max(ch.fit_r2):.2f} over the sets). Bars: change of the score for {label} "
            f"against its control, on {ch.n} cells generated de novo from the same noise for "
            f"both (not the cells shown in the other tabs)." + spread + " Largest: "
            + ", ".join(f"{n} ({c:+.2f})" for n, c, _s in top) + ".")
    return ViewResult("pathways", fig, note,
                      {"available": True, "names": ch.names, "change": ch.change,
                       "spread": ch.spread, "ranked": ch.ranked(), "label": label})


def _short_label(label: str, limit: int = 50) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def member_means(adata, scores) -> dict:
    """condition -> mean score of each ensemble member's cells (empty without members)."""
    if "member" not in adata.obs:
        return {}
    mem = adata.obs["member"].astype(int).to_numpy()
    if len(np.unique(mem)) < 2:
        return {}
    groups = adata.obs["condition"].astype(str).to_numpy()
    out = {}
    for g in dict.fromkeys(groups):
        sel = groups == g
        out[g] = [float(scores[sel & (mem == m)].mean()) for m in np.unique(mem[sel])]
    return out


def umap_scores(parts: dict, gene_set) -> np.ndarray:
    """The gene-set score of every UMAP point (the parts in order; NaN where a part lacks the
    set's genes)."""
    import anndata as ad

    from engine.analysis import log_normalized
    from engine.genesets import score_cells

    out = []
    for a in parts.values():
        b = ad.AnnData(log_normalized(a), obs=a.obs[[]].copy(), var=a.var[[]].copy())
        try:
            out.append(score_cells(b, gene_set)[0])
        except Exception:  # noqa: BLE001 - e.g. too few of the set's genes in the real cells
            out.append(np.full(a.n_obs, np.nan))
    return np.concatenate(out) if out else np.zeros(0)


# -- comparisons ---------------------------------------------------------------------------------
def doubles(exp) -> list[str]:
    """The labels of the experiment's combinations (two or more perturbations)."""
    return [k for k, c in exp.conditions.items() if len(c.perturbations) >= 2]


def singles_of(exp, label: str) -> list[str | None]:
    """For the combination ``label``: the label of each single among the experiment's
    conditions (same cell type and context), None where it was not generated."""
    cond = exp.conditions[label]
    out = []
    for p in cond.perturbations:
        hit = None
        for k, c in exp.conditions.items():
            if (len(c.perturbations) == 1 and c.cell_type == cond.cell_type
                    and c.context_dict() == cond.context_dict()
                    and (c.perturbations[0].target, c.perturbations[0].type) ==
                    (p.target, p.type)):
                hit = k
        out.append(hit)
    return out


def additive_view(exp, label: str | None) -> ViewResult:
    """A double against each single and against the additive expectation (the sum of the
    singles' effects; from the generated singles when the experiment has them, else the model's
    training statistics), with the genes deviating most named (Norman et al. 2019)."""
    combos = doubles(exp)
    if not combos:
        return ViewResult("compare", F.message_figure(
            "No combination in this experiment. Queue a double (e.g. A+B) with its singles on "
            "the Compose page to compare it with the additive expectation."),
            "Nothing to compare: no combination was generated.")
    label = label if label in combos else combos[0]
    genes = list(map(str, exp.adata.var_names))
    obs, lo, hi = effect_with_interval(exp, label)
    singles = singles_of(exp, label)
    parts = exp.conditions[label].perturbations
    panels, add, source = [], None, ""
    if all(s is not None for s in singles):
        effs = [mean_effect(exp, s) for s in singles]
        add = np.sum(effs, axis=0)
        source = "sum of the generated singles"
        for p, e in zip(parts, effs, strict=True):
            panels.append({"x": e, "y": obs, "genes": genes, "label_n": 6,
                           "xlabel": f"{p.target} alone (log2 fold change)",
                           "ylabel": "double (log2 fold change)",
                           "title": f"double vs {p.target}"})
    else:
        res = cached_result(exp, label)
        if res is None and exp.model is not None:
            try:
                import engine

                res = engine.effects_from_cells(exp.model, exp.adata, exp.conditions[label])
            except Exception:  # noqa: BLE001
                res = None
        if res is not None and res.baseline is not None and res.baseline.name == "additive":
            add = res.baseline.effect / LN2
            source = "sum of the singles measured in training (" + res.baseline.detail + ")"
    if add is None:
        return ViewResult("compare", F.message_figure(
            "The singles of this combination were neither generated here nor measured in "
            "training: there is no additive expectation to compare with."),
            "No additive expectation for this combination.")
    panels.append({"x": add, "y": obs, "genes": genes, "label_n": 10,
                   "yerr": (lo, hi) if np.isfinite(lo).any() else None,
                   "xlabel": "additive expectation (log2 fold change)",
                   "ylabel": "double, observed (log2 fold change)",
                   "title": "double vs additive"})
    fig = F.comparison_figure(panels, title=f"{label}: genetic interaction")
    dev = obs - add
    top = np.argsort(-np.abs(dev))[:10]
    outliers = [genes[i] for i in top]
    note = (f"{label} against its singles and the additive expectation ({source}). Genes far "
            f"from the diagonal deviate from additivity; the largest: {', '.join(outliers)}.")
    return ViewResult("compare", fig, note, {"label": label, "outliers": outliers,
                                             "additive": add, "observed": obs,
                                             "additive_source": source})


def real_view(exp, label: str, dataset, schema) -> ViewResult:
    """Predicted vs real effect of ``label`` per gene, when the open dataset holds real cells of
    that condition and of its control."""
    res_real = None
    for (lab, _key), v in getattr(exp, "effects", {}).items():
        if lab == label and v and v[1] is not None:
            res_real = v[1]
    if res_real is None and dataset is not None and schema is not None and \
            exp.model is not None and label in exp.conditions:
        try:
            import engine

            res_real = engine.real_effect(exp.model, dataset, schema, exp.conditions[label])
        except Exception:  # noqa: BLE001
            log.debug("no real effect", exc_info=True)
    if res_real is None:
        why = ("Open a dataset holding real cells of this condition and of its control (with "
               "its columns mapped on the Data page) to compare generated with real cells.")
        return ViewResult("compare", F.message_figure(why), why)
    pred, lo, hi = effect_with_interval(exp, label)
    real = np.asarray(res_real.effect, float) / LN2
    genes = list(map(str, exp.adata.var_names))
    fig = F.comparison_figure([{
        "x": real, "y": pred, "genes": genes, "label_n": 10,
        "yerr": (lo, hi) if np.isfinite(lo).any() else None,
        "xlabel": f"real cells (log2 fold change; {res_real.n_cells:,} vs "
                  f"{res_real.n_control:,} cells)",
        "ylabel": "generated cells (log2 fold change)", "title": "generated vs real"}],
        title=f"{label}: generated vs real cells")
    ok = np.isfinite(real) & np.isfinite(pred)
    r2 = F.r_squared(real[ok], pred[ok]) if ok.any() else float("nan")
    return ViewResult("compare", fig, f"{label}: each dot is a gene, its change in generated "
                      f"cells against its change in the open dataset's real cells (R² = "
                      f"{r2:.2f} over {int(ok.sum()):,} genes).", {"label": label, "r2": r2})


# -- sweeps --------------------------------------------------------------------------------------
def dose_series(exp) -> list[tuple[str, list[tuple[float, str]]]]:
    """Conditions that differ only by dose, with at least two doses: (name, [(dose, label)])."""
    series: dict[tuple, list] = {}
    for k, c in exp.conditions.items():
        doses = [p.dose for p in c.perturbations]
        if len(c.perturbations) != 1 or doses[0] is None:
            continue
        p = c.perturbations[0]
        key = (c.cell_type, p.target, p.type, tuple(sorted(c.context_dict().items())))
        series.setdefault(key, []).append((F.finite_or(p.dose), k))
    out = []
    for (ct, target, _t, _ctx), pts in series.items():
        if len({d for d, _ in pts}) >= 2:
            out.append((f"{target} in {ct}" if ct else str(target), sorted(pts)))
    return out


def pair_grid(exp):
    """(targets, effect size, deviation from additive) over the experiment's pairs; None when
    it has no pair. Sizes are root mean squares over genes of log2 changes."""
    pairs = [k for k in doubles(exp) if len(exp.conditions[k].perturbations) == 2]
    if not pairs:
        return None
    targets = sorted({p.target for k in pairs for p in exp.conditions[k].perturbations})
    n = len(targets)
    size = np.full((n, n), np.nan)
    dev = np.full((n, n), np.nan)
    for k in pairs:
        a, b = (targets.index(p.target) for p in exp.conditions[k].perturbations)
        e = mean_effect(exp, k)
        size[a, b] = size[b, a] = float(np.sqrt(np.mean(e ** 2)))
        singles = singles_of(exp, k)
        add = None
        if all(s is not None for s in singles):
            add = mean_effect(exp, singles[0]) + mean_effect(exp, singles[1])
        else:
            res = cached_result(exp, k)
            if res is not None and res.baseline is not None and res.baseline.name == "additive":
                add = res.baseline.effect / LN2
        if add is not None:
            dev[a, b] = dev[b, a] = float(np.sqrt(np.mean((e - add) ** 2)))
    for k, c in exp.conditions.items():     # singles on the diagonal
        if len(c.perturbations) == 1 and c.perturbations[0].target in targets:
            i = targets.index(c.perturbations[0].target)
            size[i, i] = float(np.sqrt(np.mean(mean_effect(exp, k) ** 2)))
    return targets, size, dev


def sweep_view(exp, genes=None) -> ViewResult:
    series = dose_series(exp)
    simulated = bool(getattr(getattr(exp.model, "space", None), "simulated_dose", True)) \
        if exp.model is not None else True
    if series:
        name, pts = series[0]
        labels = [lab for _d, lab in pts]
        effs = {lab: effect_with_interval(exp, lab) for lab in labels}
        var = list(map(str, exp.adata.var_names))
        if not genes:
            big = np.max(np.abs(np.vstack([effs[lab][0] for lab in labels])), axis=0)
            genes = [var[i] for i in np.argsort(-big)[:6]]
        idx = [var.index(g) for g in genes if g in var]
        curves = {var[j]: [effs[lab][0][j] for lab in labels] for j in idx}
        low = {var[j]: [effs[lab][1][j] for lab in labels] for j in idx}
        high = {var[j]: [effs[lab][2][j] for lab in labels] for j in idx}
        doses = [d for d, _ in pts]
        fig = F.dose_figure(doses, curves, low=low, high=high, simulated=simulated,
                            title=f"Dose response: {name}")
        sim = " The model's doses are SIMULATED (no measured dose data): read the shape, not " \
              "the numbers." if simulated else ""
        return ViewResult("sweep", fig, f"Dose series {name}: {len(doses)} doses, the "
                          f"{len(curves)} genes that change most.{sim}",
                          {"doses": doses, "curves": curves, "simulated": simulated})
    grid = pair_grid(exp)
    if grid is not None:
        targets, size, dev = grid
        fig = F.combination_grid_figure(targets, size, dev,
                                        title="Combination grid (diagonal: singles)")
        return ViewResult("sweep", fig, f"{len(targets)} targets: each cell is a pair "
                          "(diagonal: the single). Left: how much it changes expression; "
                          "right: how far the pair is from the sum of its singles (empty: a "
                          "single is missing).",
                          {"targets": targets, "size": size, "deviation": dev})
    singles = [k for k, c in exp.conditions.items() if len(c.perturbations) == 1]
    if len(singles) >= 2:   # 'All single perturbations': one bar per target
        sizes = {k: float(np.sqrt(np.mean(mean_effect(exp, k) ** 2))) for k in singles}
        order = sorted(sizes, key=lambda k: -sizes[k])
        fig = F.new_figure(max(5, 0.3 * len(order) + 2), 4)
        ax = fig.add_subplot()
        ax.bar(range(len(order)), [sizes[k] for k in order], color=F.PALETTE[0])
        ax.set_xticks(range(len(order)), [exp.conditions[k].perturbation_label for k in order],
                      rotation=60, ha="right", rotation_mode="anchor")
        ax.set_ylabel("effect size (RMS log2 fold change)")
        ax.set_title("Single perturbations, largest effect first")
        return ViewResult("sweep", fig, f"{len(order)} single perturbations ranked by how much "
                          "they change expression.", {"sizes": sizes})
    return ViewResult("sweep", F.message_figure(
        "No sweep here. Use Dose series or All single perturbations on the Compose page, or "
        "queue pairs (A+B) with their singles for a combination grid."), "No sweep.")
