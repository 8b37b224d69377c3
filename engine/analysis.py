"""Headless analysis of generated and real cells: differential expression, heatmap genes, UMAP.

All functions take AnnData objects and return numpy arrays / pandas DataFrames; none of them
imports Qt. Expression is compared in log1p-normalised space (counts scaled to 10,000 per cell,
then ``log1p``). Where the values come from is decided by :func:`log_normalized`:

- ``layer=`` given: that layer (counts are normalised and logged, log values are used as they are);
- otherwise ``layers['counts']`` if present (normalised + logged), else ``X`` (normalised + logged
  when it holds integers, used as it is when it already holds log-normalised values).

UMAP speed: :func:`embed_umap` fits UMAP on at most ``max_fit_cells`` cells (default 5,000; each
group keeps at least a fair share, large reference groups are subsampled with a fixed seed). The
remaining cells are placed at the mean UMAP position of their 10 nearest fitted neighbours in PCA
space. Every input cell therefore gets a coordinate, and ~20,000 cells embed in seconds, not
minutes. PCA and UMAP use ``random_state=0``, so the same input gives the same picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.preprocess import TARGET_SUM, log1p_normalize
from .errors import DataError
from .keys import LAYERS
from .progress import Progress, ProgressFn, check_cancel

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from anndata import AnnData

__all__ = ["differential_expression", "top_changed_genes", "embed_umap", "log_normalized",
           "gene_values", "shared_log_normalized"]

_TARGET_SUM = TARGET_SUM


# -- expression in log1p-normalised space -------------------------------------------------------
def _is_integer_valued(m: Any) -> bool:
    import scipy.sparse as sp

    data = m.data if sp.issparse(m) else np.asarray(m).ravel()
    if data.size == 0:
        return True
    sample = data[: 100_000]
    return bool(np.all(np.isfinite(sample)) and np.all(sample >= 0)
                and np.allclose(sample, np.round(sample)))


def _normalize_log1p(m: Any):
    """CSR float32 log1p-normalised values (:func:`engine.data.preprocess.log1p_normalize`)."""
    import scipy.sparse as sp

    return log1p_normalize(m if sp.issparse(m) else sp.csr_matrix(m), _TARGET_SUM)


def log_normalized(adata: AnnData, *, layer: str | None = None):
    """Return a cells x genes CSR float32 matrix of log1p-normalised expression (see module doc)."""
    import scipy.sparse as sp

    if layer is not None:
        if layer not in adata.layers:
            raise DataError(f"layer {layer!r} is not in this dataset; layers are: "
                            f"{', '.join(adata.layers.keys()) or 'none'}")
        m = adata.layers[layer]
    elif LAYERS.COUNTS in adata.layers:
        m = adata.layers[LAYERS.COUNTS]
        layer = LAYERS.COUNTS
    else:
        m = adata.X
    if m is None:
        raise DataError("this dataset has no expression matrix")
    if layer == LAYERS.COUNTS or _is_integer_valued(m):
        return _normalize_log1p(m)
    out = sp.csr_matrix(m, dtype=np.float32)
    return out


def _mean_var(m) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and unbiased variance of a sparse matrix without densifying it."""
    n = m.shape[0]
    mean = np.asarray(m.mean(axis=0), dtype=np.float64).ravel()
    sq = m.copy()
    sq.data = sq.data.astype(np.float64) ** 2
    mean_sq = np.asarray(sq.mean(axis=0), dtype=np.float64).ravel()
    var = np.maximum(mean_sq - mean**2, 0.0)
    if n > 1:
        var *= n / (n - 1)
    return mean, var


def _shared_genes(adatas: list[AnnData]) -> list[str]:
    genes = list(adatas[0].var_names)
    for a in adatas[1:]:
        keep = set(a.var_names)
        genes = [g for g in genes if g in keep]
    return genes


def shared_log_normalized(adatas: Mapping[str, AnnData]) -> tuple[dict, list[str]]:
    """Log1p-normalised matrices of several groups over the genes they all share.

    Returns ``({name: CSR float32 cells x genes}, genes)``, skipping empty groups; what
    :func:`embed_umap` starts from (useful to ship the work to another process).
    """
    names = [k for k, v in adatas.items() if v is not None and v.n_obs > 0]
    if not names:
        raise DataError("no cells to embed")
    genes = _shared_genes([adatas[k] for k in names])
    return {k: log_normalized(adatas[k])[:, _columns(adatas[k], genes)] for k in names}, genes


def _columns(adata: AnnData, genes: list[str]) -> np.ndarray:
    idx = adata.var_names.get_indexer(genes)
    return np.asarray(idx, dtype=np.int64)


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values."""
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(ranked)
    out[order] = np.clip(ranked, 0.0, 1.0)
    return out


# -- differential expression ------------------------------------------------------------------
def differential_expression(a: AnnData, b: AnnData, *, layer: str | None = None) -> pd.DataFrame:
    """Compare cells ``a`` against cells ``b`` gene by gene (Welch t-test, Benjamini-Hochberg).

    Returns a DataFrame with columns ``gene, mean_a, mean_b, log2fc, pval, padj``, one row per gene
    shared by ``a`` and ``b``, sorted by ``|log2fc|`` (largest first). ``mean_a``/``mean_b`` are mean
    log1p-normalised expression; ``log2fc = (mean_a - mean_b) / ln 2``, the log2 ratio of the
    geometric means of ``1 + normalised expression`` (robust for genes that are zero in one group).
    """
    import pandas as pd
    from scipy import stats

    if a.n_obs == 0 or b.n_obs == 0:
        raise DataError("differential expression needs cells in both groups "
                        f"(got {a.n_obs} and {b.n_obs})")
    genes = _shared_genes([a, b])
    if not genes:
        raise DataError("the two groups of cells share no genes")
    ma = log_normalized(a, layer=layer)[:, _columns(a, genes)]
    mb = log_normalized(b, layer=layer)[:, _columns(b, genes)]
    mean_a, var_a = _mean_var(ma)
    mean_b, var_b = _mean_var(mb)
    na, nb = a.n_obs, b.n_obs
    se2_a, se2_b = var_a / na, var_b / nb
    se = np.sqrt(se2_a + se2_b)
    diff = mean_a - mean_b
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, diff / se, 0.0)
        den = np.where(na > 1, se2_a**2 / max(na - 1, 1), 0.0) + \
            np.where(nb > 1, se2_b**2 / max(nb - 1, 1), 0.0)
        df = np.where(den > 0, (se2_a + se2_b) ** 2 / den, 1.0)
    pval = 2.0 * stats.t.sf(np.abs(t), np.maximum(df, 1.0))
    pval = np.where(se > 0, pval, np.where(diff == 0, 1.0, 0.0))
    pval = np.clip(np.nan_to_num(pval, nan=1.0), 0.0, 1.0)
    out = pd.DataFrame({
        "gene": genes,
        "mean_a": mean_a.astype(np.float32),
        "mean_b": mean_b.astype(np.float32),
        "log2fc": (diff / math.log(2)).astype(np.float32),
        "pval": pval,
        "padj": _bh(pval),
    })
    order = np.argsort(-np.abs(out["log2fc"].to_numpy()), kind="stable")
    return out.iloc[order].reset_index(drop=True)


# -- heatmap genes ----------------------------------------------------------------------------
def top_changed_genes(groups: Mapping[str, AnnData], control: AnnData | Mapping[str, AnnData],
                      n: int = 30, *, layer: str | None = None) -> tuple[list[str], np.ndarray]:
    """Genes that change most between any group and the control, for a heatmap.

    Returns ``(genes, matrix)``: ``matrix[i, j]`` is the mean log1p-normalised expression of gene
    ``j`` in group ``i`` minus its mean in ``control`` (float32, rows in the order of ``groups``).
    ``control`` may also map each group name to its own matching control (e.g. one control per
    cell type when the groups are different cell types).
    Genes are ranked by their largest absolute change over all groups; the ``n`` best are kept
    and ordered by the sign and size of their change in the first group, so up- and
    down-regulated genes form blocks.
    """
    if not groups:
        raise DataError("no groups of cells to compare with the control")
    names = list(groups)
    controls = ({k: control[k] for k in names} if isinstance(control, Mapping)
                else {k: control for k in names})
    distinct = list({id(c): c for c in controls.values()}.values())
    genes = _shared_genes([*distinct, *groups.values()])
    if not genes:
        raise DataError("the generated groups and the control share no genes")
    c_means = {id(c): np.asarray(log_normalized(c, layer=layer)[:, _columns(c, genes)]
                                 .mean(axis=0)).ravel() for c in distinct}
    rows = []
    for name in names:
        g = groups[name]
        if g.n_obs == 0:
            rows.append(np.zeros(len(genes)))
            continue
        m = np.asarray(log_normalized(g, layer=layer)[:, _columns(g, genes)].mean(axis=0)).ravel()
        rows.append(m - c_means[id(controls[name])])
    diff = np.vstack(rows)
    score = np.abs(diff).max(axis=0)
    k = int(min(max(n, 1), len(genes)))
    top = np.argsort(-score, kind="stable")[:k]
    top = top[np.argsort(-diff[0, top], kind="stable")]
    matrix = np.nan_to_num(diff[:, top]).astype(np.float32)
    return [genes[i] for i in top], matrix


def gene_values(adata: AnnData, gene: str, *, layer: str | None = None) -> np.ndarray:
    """Log1p-normalised expression of one gene in every cell (zeros if the gene is absent)."""
    if gene not in adata.var_names:
        return np.zeros(adata.n_obs, dtype=np.float32)
    j = int(adata.var_names.get_loc(gene))
    if layer is None and LAYERS.COUNTS not in adata.layers and not _is_integer_valued(adata.X):
        col = adata.X[:, j]
        return np.asarray(col.toarray() if hasattr(col, "toarray") else col,
                          dtype=np.float32).ravel()
    m = log_normalized(adata, layer=layer)
    return np.asarray(m[:, j].toarray(), dtype=np.float32).ravel()


# -- UMAP ---------------------------------------------------------------------------------------
def _report(progress: ProgressFn | None, fraction: float, phase: str) -> None:
    if progress is not None:
        progress(Progress(float(fraction), phase))


def embed_umap(adatas: Mapping[str, AnnData], *, genes: list[str] | None = None,
               progress: ProgressFn | None = None, cancel: Any = None,
               n_pcs: int = 30, n_top_genes: int = 2000, max_fit_cells: int = 5000,
               n_neighbors: int = 15, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D UMAP of several groups of cells together, over the genes they share.

    ``adatas`` maps a label (e.g. ``"generated"``, ``"reference"``) to cells. Steps: log1p-normalise
    each group, keep the shared genes (or ``genes``), take the ``n_top_genes`` most variable ones,
    centre, PCA (``n_pcs``), UMAP on at most ``max_fit_cells`` cells, and place the remaining cells
    by their 10 nearest fitted neighbours in PCA space (see the module docstring).

    Returns ``(coords, labels)``: ``coords`` float32 of shape (total cells, 2) in the order the
    groups were given, ``labels`` an object array naming each cell's group.
    Raises :class:`engine.errors.Cancelled` when ``cancel`` is set between steps.
    """
    import scipy.sparse as sp

    names = [k for k, v in adatas.items() if v is not None and v.n_obs > 0]
    if not names:
        raise DataError("no cells to embed")
    parts = [adatas[k] for k in names]
    shared = _shared_genes(parts)
    if genes is not None:
        keep = set(shared)
        shared = [g for g in genes if g in keep]
    if len(shared) < 2:
        raise DataError("the groups of cells share fewer than 2 genes; cannot embed them together")
    _report(progress, 0.02, "normalising")
    mats = []
    for a in parts:
        check_cancel(cancel)
        mats.append(log_normalized(a)[:, _columns(a, shared)])
    labels = np.concatenate([np.full(a.n_obs, k, dtype=object) for k, a in zip(names, parts, strict=True)])
    m = sp.vstack(mats).tocsr()
    n_cells = m.shape[0]

    # highly variable genes by variance of log expression
    check_cancel(cancel)
    _, var = _mean_var(m)
    if m.shape[1] > n_top_genes:
        m = m[:, np.sort(np.argsort(-var)[:n_top_genes])]
    x = m.toarray().astype(np.float32)
    x -= x.mean(axis=0, keepdims=True)

    # choose the cells UMAP is fitted on: every group keeps a fair share
    rng = np.random.default_rng(random_state)
    if n_cells > max_fit_cells:
        sizes = np.array([a.n_obs for a in parts])
        quota = _fair_quota(sizes, max_fit_cells)
        fit_idx_parts, start = [], 0
        for size, q in zip(sizes, quota, strict=True):
            idx = np.arange(start, start + size)
            fit_idx_parts.append(np.sort(rng.choice(idx, size=q, replace=False)) if q < size
                                 else idx)
            start += size
        fit_idx = np.concatenate(fit_idx_parts)
    else:
        fit_idx = np.arange(n_cells)

    _report(progress, 0.15, "PCA")
    check_cancel(cancel)
    k = int(max(2, min(n_pcs, x.shape[1] - 1, fit_idx.size - 1)))
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, svd_solver="randomized", random_state=random_state)
    pca.fit(x[fit_idx])
    pcs = pca.transform(x).astype(np.float32)
    del x

    check_cancel(cancel)
    _report(progress, 0.3, "UMAP")
    coords = np.zeros((n_cells, 2), dtype=np.float32)
    if fit_idx.size < 4:
        coords[:, :] = pcs[:, :2]
        _report(progress, 1.0, "done")
        return coords, labels
    import warnings

    import umap
    from sklearn.neighbors import NearestNeighbors

    # exact kNN with scikit-learn (fast at this size) spares UMAP's nearest-neighbour-descent JIT
    # compilation, which costs ~25 s on the first call in a process
    fit_pcs = pcs[fit_idx]
    k_nn = int(min(n_neighbors, fit_idx.size - 1))
    dist, ind = NearestNeighbors(n_neighbors=k_nn).fit(fit_pcs).kneighbors(fit_pcs)
    check_cancel(cancel)
    reducer = umap.UMAP(n_components=2, n_neighbors=k_nn, random_state=random_state,
                        n_epochs=200, init="pca", precomputed_knn=(ind, dist, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = reducer.fit_transform(fit_pcs).astype(np.float32)
    check_cancel(cancel)
    coords[fit_idx] = fitted
    rest = np.setdiff1d(np.arange(n_cells), fit_idx, assume_unique=True)
    if rest.size:
        _report(progress, 0.9, "placing remaining cells")
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=min(10, fit_idx.size)).fit(pcs[fit_idx])
        _, ind = nn.kneighbors(pcs[rest])
        coords[rest] = fitted[ind].mean(axis=1)
    _report(progress, 1.0, "done")
    return coords, labels


def _fair_quota(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` cells among groups: small groups keep all their cells, large ones share."""
    quota = np.zeros_like(sizes)
    remaining, left = int(budget), list(np.argsort(sizes))
    while left:
        share = remaining // len(left)
        i = left[0]
        if sizes[i] <= share:
            quota[i] = sizes[i]
            remaining -= int(sizes[i])
            left.pop(0)
        else:
            for j in left:
                quota[j] = min(sizes[j], share)
            break
    return quota

