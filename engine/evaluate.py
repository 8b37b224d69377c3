"""Score generated cells against held-out real cells, beside simple baselines.

All scores are computed in log1p(normalize_total 1e4) space over the model's genes, for one
target group (a condition: cell type x perturbation x context):

- ``r2_top100`` / ``r2_all``: squared Pearson correlation between predicted and real mean
  expression over the top-100 DEGs / all genes (the scGen / CPA convention);
- ``pearson_delta_top100`` / ``pearson_delta_all``: Pearson correlation between the predicted and
  the real change from the group's real control cells;
- ``energy_ratio``: energy distance between predicted and real cells in a 30-d PCA of all the
  real cells of the evaluation set (at most 3,000, sampled with a fixed seed), divided by the
  energy distance between the real control cells and the real target cells (< 1: closer to the
  truth than "no change"; the control baseline is 1). The PCA is fitted on all real cells, not
  only the target and control groups: 30 components fitted on a few dozen cells describe those
  cells' own noise, and any new sample, even new real cells, then looks far away. Every method
  enters the energy distance with the same number of cells as the control baseline (at most
  600): the plug-in estimator's bias shrinks with the sample size, so a method with more cells
  would otherwise look closer for free.

The model's prediction is its distribution, so its mean is estimated from ``n_cells`` generated
cells (default: 2,000 or the number of real cells, whichever is larger); with a few hundred
sparse cells the sampling noise of the predicted mean alone lowers the correlations.

With ``reference`` (e.g. the training cells), the baselines' effects are measured in the
reference cells, i.e. from the same data the model learnt from (each effect against the
reference's own control cells); for combinations an ``additive_heldout`` row keeps the sum of
singles measured in ``real`` (it shares ``real``'s control cells with the truth, whose noise then
correlates prediction and truth); and a ``real_train`` row scores the real reference
cells of the same condition as if they were a prediction: a yardstick for the noise of small
held-out groups (not a hard ceiling: a model's mean over 2,000 generated cells, informed by
every condition, can be closer to the truth than a few dozen real cells). When even real cells of the condition do not beat ``control`` on the
energy ratio, the perturbation has no effect this metric can detect.

DEGs are the genes ranked by |mean(real perturbed) - mean(real control)|.

Baselines: ``control`` (no change), ``mean_shift`` (the average effect of the same perturbation
in the other cell types / contexts of ``real``, added to the target's control cells) and, for
combinations, ``additive`` (the sum of the single-perturbation effects, taken in the same cell
type when present there, else averaged over the others).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .conditions.spec import Condition
from .errors import ConditionError, DataError

METRICS = ("r2_top100", "r2_all", "pearson_delta_top100", "pearson_delta_all", "energy_ratio")


@dataclass
class EvalResult:
    condition: dict
    mode: str
    n_real: int
    n_control: int
    rows: list[dict] = field(default_factory=list)
    degs: list[str] = field(default_factory=list)

    def row(self, method: str) -> dict | None:
        return next((r for r in self.rows if r["method"] == method), None)

    def to_dict(self) -> dict:
        return {"condition": self.condition, "mode": self.mode, "n_real": self.n_real,
                "n_control": self.n_control, "rows": self.rows, "degs": self.degs[:20]}

    def table(self) -> str:
        head = f"{'method':<12}" + "".join(f"{m:>22}" for m in METRICS)
        lines = [head]
        for r in self.rows:
            lines.append(f"{r['method']:<12}" + "".join(
                f"{_fmt(r.get(m)):>22}" for m in METRICS))
        return "\n".join(lines)


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def lognorm(counts) -> np.ndarray:
    """Dense log1p(normalize_total 1e4) of a (cells x genes) count matrix."""
    import scipy.sparse as sp

    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    x = x.astype(np.float64)
    lib = x.sum(axis=1, keepdims=True)
    return np.log1p(x / np.maximum(lib, 1.0) * 1e4)


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def energy_distance(x: np.ndarray, y: np.ndarray, *, max_cells: int = 600,
                    seed: int = 0) -> float:
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    if len(x) > max_cells:
        x = x[rng.choice(len(x), max_cells, replace=False)]
    if len(y) > max_cells:
        y = y[rng.choice(len(y), max_cells, replace=False)]
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def score(pred: np.ndarray, real: np.ndarray, ctrl: np.ndarray, degs: np.ndarray,
          pca, *, max_cells: int = 600) -> dict:
    """Metrics for one method. ``pred``, ``real``, ``ctrl``: log-normalised cells x genes.

    The energy distances use the same number of predicted and control cells (see module doc)."""
    pm, rm, cm = pred.mean(0), real.mean(0), ctrl.mean(0)
    out = {"r2_top100": _pearson(pm[degs], rm[degs]) ** 2,
           "r2_all": _pearson(pm, rm) ** 2,
           "pearson_delta_top100": _pearson(pm[degs] - cm[degs], rm[degs] - cm[degs]),
           "pearson_delta_all": _pearson(pm - cm, rm - cm)}
    n = min(len(pred), len(ctrl), max_cells)
    zp, zr, zc = (pca.transform(_subsample(x, n, seed)) for x, seed in
                  ((pred, 1), (real, 0), (ctrl, 2)))
    base = energy_distance(zc, zr, max_cells=max_cells)
    out["energy_ratio"] = (energy_distance(zp, zr, max_cells=max_cells) / base if base > 0
                           else float("nan"))
    return {k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in out.items()}


def _subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]


def fit_pca(counts, *, n_components: int = 30, max_cells: int = 3000, seed: int = 0):
    """PCA of the log-normalised real cells (a fixed random subset of at most ``max_cells``)."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = np.arange(counts.shape[0])
    if len(rows) > max_cells:
        rows = np.sort(rng.choice(rows, max_cells, replace=False))
    X = lognorm(counts[rows])
    k = min(n_components, X.shape[0] - 1, X.shape[1])
    return PCA(n_components=k, random_state=seed).fit(X)


def _group_masks(real, schema, model):
    """Conditions of every real cell, completed to the model's vocabulary conventions."""
    real = schema.filter(real)
    codes, uniq = schema.condition_codes(real)
    uniq = [model.space.complete(c) if _knows(model, c) else c for c in uniq]
    return real, codes, uniq


def _knows(model, c: Condition) -> bool:
    try:
        model.space.validate(c)
        return True
    except ConditionError:
        return False


def evaluate(model, real, schema, condition: Condition, *, mode: str = "denovo", seed: int = 0,
             steps: int | None = None, guidance: float | None = None, top_n: int = 100,
             n_cells: int | None = None, reference=None, progress=None,
             cancel=None) -> EvalResult:
    """Evaluate ``model`` on the real cells of ``condition`` in ``real`` (see module doc).

    ``reference``: optional other real cells (e.g. the training cells) whose cells of the same
    condition are scored as the ``real_train`` row."""
    from .data.io import get_counts

    if mode not in ("denovo", "perturb"):
        raise ValueError(f"mode must be 'denovo' or 'perturb', got {mode!r}")
    cond = model.check_condition(condition)
    real, codes, uniq = _group_masks(real, schema, model)
    mapping = model.gene_mapping(real)
    if mapping.missing:
        raise DataError(f"evaluation data lacks {len(mapping.missing)} model genes "
                        f"(e.g. {', '.join(mapping.missing[:5])})")
    counts, _ = get_counts(real)
    counts = counts.tocsr()[:, mapping.index]
    key = _group_key(cond)
    gid = {i for i, c in enumerate(uniq) if _group_key(c) == key}
    cid = {i for i, c in enumerate(uniq) if _group_key(c) == _group_key(cond.control())}
    tmask, cmask = np.isin(codes, list(gid)), np.isin(codes, list(cid))
    if tmask.sum() < 5 or cmask.sum() < 5:
        raise DataError(f"need at least 5 real cells of {cond.label} and of its control in the "
                        f"evaluation data; found {int(tmask.sum())} and {int(cmask.sum())}")
    X_t, X_c = lognorm(counts[tmask]), lognorm(counts[cmask])
    degs = np.argsort(-np.abs(X_t.mean(0) - X_c.mean(0)))[:top_n]
    pca = fit_pca(counts)

    preds: dict[str, np.ndarray] = {}
    n = int(n_cells or max(int(tmask.sum()), 2000))
    if mode == "denovo":
        gen = model.generate(cond, n, seed=seed, steps=steps, guidance=guidance,
                             progress=progress, cancel=cancel)
    else:
        gen = model.perturb(real[cmask], cond, seed=seed, steps=steps, guidance=guidance,
                            progress=progress, cancel=cancel)
    preds["model"] = lognorm(gen.layers["counts"])
    preds["control"] = X_c
    b_counts, b_codes, b_uniq = counts, codes, uniq
    if reference is not None:
        b_counts, b_codes, b_uniq = _model_counts(model, reference, schema)
        ref = _group_cells(b_counts, b_codes, b_uniq, key)
        if ref is not None:
            preds["real_train"] = ref
    shift = _mean_effect(b_counts, b_codes, b_uniq, cond, exclude_key=key)
    if shift is not None:
        preds["mean_shift"] = np.maximum(X_c + shift, 0.0)
    if len(cond.perturbations) > 1:
        add = _additive_effect(b_counts, b_codes, b_uniq, cond)
        if add is not None:
            preds["additive"] = np.maximum(X_c + add, 0.0)
        if reference is not None:          # also the convention without a reference
            add = _additive_effect(counts, codes, uniq, cond)
            if add is not None:
                preds["additive_heldout"] = np.maximum(X_c + add, 0.0)
    rows = [{"method": m, **score(p, X_t, X_c, degs, pca)} for m, p in preds.items()]
    return EvalResult(cond.to_dict(), mode, int(tmask.sum()), int(cmask.sum()), rows,
                      [model.genes[i] for i in degs])


def _model_counts(model, adata, schema):
    """(counts as CSR in the model's gene order, condition codes, completed conditions)."""
    from .data.io import get_counts

    adata, codes, uniq = _group_masks(adata, schema, model)
    return get_counts(adata)[0].tocsr()[:, model.gene_mapping(adata).index], codes, uniq


def _group_cells(counts, codes, uniq, key) -> np.ndarray | None:
    """Log-normalised cells of the group ``key`` (None if fewer than 5)."""
    rows = np.isin(codes, [i for i, c in enumerate(uniq) if _group_key(c) == key])
    return lognorm(counts[rows]) if rows.sum() >= 5 else None


def reference_cells(model, reference, schema, condition: Condition) -> np.ndarray | None:
    """Log-normalised real cells of ``condition`` in ``reference`` (None if fewer than 5)."""
    return _group_cells(*_model_counts(model, reference, schema),
                        _group_key(model.space.complete(condition)))


def _group_key(c: Condition):
    return (c.cell_type, tuple((p.target, p.type) for p in c.perturbations), c.context)


def _effect(counts, codes, uniq, pert_cond: Condition) -> np.ndarray | None:
    """Mean log-expression of ``pert_cond`` minus that of its control, or None if absent."""
    gi = [i for i, c in enumerate(uniq) if _group_key(c) == _group_key(pert_cond)]
    ci = [i for i, c in enumerate(uniq) if _group_key(c) == _group_key(pert_cond.control())]
    tm, cm = np.isin(codes, gi), np.isin(codes, ci)
    if tm.sum() < 3 or cm.sum() < 3:
        return None
    return lognorm(counts[tm]).mean(0) - lognorm(counts[cm]).mean(0)


def _mean_effect(counts, codes, uniq, cond: Condition, exclude_key) -> np.ndarray | None:
    """Average effect of the same perturbation in the other cell types / contexts."""
    pkey = tuple((p.target, p.type) for p in cond.perturbations)
    effects = []
    for c in uniq:
        if _group_key(c) == exclude_key or c.is_control:
            continue
        if tuple((p.target, p.type) for p in c.perturbations) == pkey:
            e = _effect(counts, codes, uniq, c)
            if e is not None:
                effects.append(e)
    return np.mean(effects, axis=0) if effects else None


def _additive_effect(counts, codes, uniq, cond: Condition) -> np.ndarray | None:
    total = 0.0
    for p in cond.perturbations:
        single = Condition.make(cond.cell_type, [p], cond.context_dict())
        e = _effect(counts, codes, uniq, single)
        if e is None:
            e = _mean_effect(counts, codes, uniq, single, exclude_key=_group_key(single))
        if e is None:
            return None
        total = total + e
    return total
