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

Shared control cells: Pearson delta takes every prediction's change and the truth's from the
same real control cells, so their sampling noise correlates the two. The additive baseline
subtracts those cells twice (each single's effect), a generated prediction once, the mean shift
not at all (its effects come from other groups' controls). Where effects are small against
that noise (a few dozen control cells, a weak perturbation) the ranking of methods then says
more about the sharing than about the predictions. ``control_split=k`` removes it: the target's
control cells are split at random (seed ``k``) into two halves; one is what every method
starts from (the baselines' effects are measured against it, "perturb my cells" perturbs it,
each prediction's change is taken from it), the other is the truth's control (the DEGs, the
real change and the energy ratio's control). Average over several ``k``: one split is noisy.

Baselines: ``control`` (no change), ``mean_shift`` (the average effect of the same perturbation
in the other cell types / contexts of ``real``, added to the target's control cells) and, for
combinations, ``additive`` (the sum of the single-perturbation effects, taken in the same cell
type when present there, else averaged over the others).

The model cards (build_scripts/train_models.py) come from this module too: :func:`split` (the
stratified hold-out), :func:`clear_effects` (DE genes per perturbation in the training cells),
:func:`evaluate_population` (atlas models: a generated population against the held-out cells of
that type) and :func:`evaluate_many` (every condition of a held-out set, with the real cells,
the PCA and the reference prepared once; each result equals :func:`evaluate`'s).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .conditions.spec import Condition, group_key
from .data.preprocess import log1p_normalize
from .errors import ConditionError, DataError
from .keys import LAYERS

METRICS = ("r2_top100", "r2_all", "pearson_delta_top100", "pearson_delta_all", "energy_ratio")
#: Fewest real cells of a target group and of its control for :func:`evaluate`.
MIN_GROUP_CELLS = 5
#: Fewest cells of a group and of its control for a baseline's effect to be measured.
MIN_EFFECT_CELLS = 3

__all__ = ["METRICS", "EvalResult", "evaluate", "evaluate_many", "evaluate_population",
           "evaluate_splits",
           "group_effects",
           "clear_effects", "split", "group_key", "lognorm", "score", "fit_pca",
           "energy_distance", "reference_cells"]


@dataclass
class EvalResult:
    condition: dict
    mode: str
    n_real: int
    n_control: int
    rows: list[dict] = field(default_factory=list)
    degs: list[str] = field(default_factory=list)
    control_split: int | None = None       # the seed of the control-cell split, if any

    def row(self, method: str) -> dict | None:
        return next((r for r in self.rows if r["method"] == method), None)

    def to_dict(self) -> dict:
        return {"condition": self.condition, "mode": self.mode, "n_real": self.n_real,
                "n_control": self.n_control, "rows": self.rows, "degs": self.degs[:20],
                **({} if self.control_split is None else {"control_split": self.control_split})}

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
    """Dense float64 log1p(normalize_total 1e4) of a (cells x genes) count matrix: the space of
    every score here (:func:`engine.data.preprocess.log1p_normalize` in float64, densified)."""
    import scipy.sparse as sp

    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    return log1p_normalize(x, dtype=np.float64)


_group_key = group_key          # the former private name (build scripts of older checkouts)


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
          pca, *, max_cells: int = 600, real_ctrl: np.ndarray | None = None) -> dict:
    """Metrics for one method. ``pred``, ``real``, ``ctrl``: log-normalised cells x genes.

    ``real_ctrl``: the truth's own control cells, when they are not ``ctrl`` (the control
    split of the module doc): the real change and the energy ratio's control come from them.
    The energy distances use the same number of predicted and control cells (see module doc)."""
    truth_ctrl = ctrl if real_ctrl is None else real_ctrl
    pm, rm, cm, rcm = pred.mean(0), real.mean(0), ctrl.mean(0), truth_ctrl.mean(0)
    out = {"r2_top100": _pearson(pm[degs], rm[degs]) ** 2,
           "r2_all": _pearson(pm, rm) ** 2,
           "pearson_delta_top100": _pearson(pm[degs] - cm[degs], rm[degs] - rcm[degs]),
           "pearson_delta_all": _pearson(pm - cm, rm - rcm)}
    n = min(len(pred), len(truth_ctrl), max_cells)
    zp, zr, zc = (pca.transform(_subsample(x, n, seed)) for x, seed in
                  ((pred, 1), (real, 0), (truth_ctrl, 2)))
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


# -- the hold-out split and the cards' effect sizes ----------------------------------------------
def split(adata, schema, frac: float = 0.2, seed: int = 0):
    """Stratified hold-out: ``(train, test)`` copies of ``adata``, ``test`` holding ``frac`` of
    the cells of every condition group (at least 3; none of a group with fewer than 10 cells).

    Deterministic for a given ``seed``: groups are visited in the order of their condition codes
    and each draws its cells from one ``numpy`` generator."""
    codes, _ = schema.condition_codes(adata)
    rng = np.random.default_rng(seed)
    held = np.zeros(adata.n_obs, bool)
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        k = max(3, int(round(frac * len(idx)))) if len(idx) >= 10 else 0
        held[rng.choice(idx, k, replace=False)] = True
    return adata[~held].copy(), adata[held].copy()


def clear_effects(train, schema, *, alpha: float = 0.05) -> dict:
    """Number of differentially expressed genes of each perturbation, judged on the TRAINING
    cells: genes with a Benjamini-Hochberg adjusted p < ``alpha`` (Welch t-test on
    log-normalised values) between the perturbed cells and the control cells of their group.

    Returns ``{group_key(condition): n_de_genes}`` for every perturbed condition with at least 5
    cells and 5 control cells (conditions as the schema reads them, not completed to a model)."""
    from scipy.stats import false_discovery_control, ttest_ind

    from .data.io import get_counts

    train = schema.filter(train)
    codes, uniq = schema.condition_codes(train)
    counts = get_counts(train)[0].tocsr()
    out = {}
    for i, c in enumerate(uniq):
        if c.is_control:
            continue
        ctrl = [j for j, d in enumerate(uniq) if group_key(d) == group_key(c.control())]
        a, b = codes == i, np.isin(codes, ctrl)
        if a.sum() < MIN_GROUP_CELLS or b.sum() < MIN_GROUP_CELLS:
            continue
        xa, xb = lognorm(counts[a]), lognorm(counts[b])
        keep = (xa.var(0) + xb.var(0)) > 0
        p = ttest_ind(xa[:, keep], xb[:, keep], equal_var=False).pvalue
        n_de = int((false_discovery_control(np.nan_to_num(p, nan=1.0)) < alpha).sum())
        out[group_key(c)] = n_de
    return out


# -- real cells prepared once --------------------------------------------------------------------
class _Cells:
    """Real cells in the model's gene order (CSR counts), their condition codes and the
    conditions completed to the model's conventions; group means are cached."""

    def __init__(self, model, adata, schema, *, require_genes: bool = False) -> None:
        from .data.io import get_counts

        self.adata, self.codes, self.uniq = _group_masks(adata, schema, model)
        mapping = model.gene_mapping(self.adata)
        if require_genes and mapping.missing:
            raise DataError(f"evaluation data lacks {len(mapping.missing)} model genes "
                            f"(e.g. {', '.join(mapping.missing[:5])})")
        self.counts = get_counts(self.adata)[0].tocsr()[:, mapping.index]
        self.keys = [group_key(c) for c in self.uniq]
        self._means: dict = {}

    def rows(self, key) -> np.ndarray:
        return np.isin(self.codes, [i for i, k in enumerate(self.keys) if k == key])

    def without(self, rows: np.ndarray) -> _Cells:
        """The same cells less ``rows`` (indices), with a fresh cache of group means."""
        keep = np.ones(len(self.codes), bool)
        keep[rows] = False
        out = object.__new__(_Cells)
        out.adata, out.codes, out.uniq, out.keys = (self.adata[keep], self.codes[keep],
                                                    self.uniq, self.keys)
        out.counts, out._means = self.counts[keep], {}
        return out

    def cells(self, key, min_cells: int = MIN_GROUP_CELLS) -> np.ndarray | None:
        """Log-normalised cells of the group ``key`` (None if fewer than ``min_cells``)."""
        rows = self.rows(key)
        return lognorm(self.counts[rows]) if rows.sum() >= min_cells else None

    def effect(self, c: Condition) -> np.ndarray | None:
        """Mean log-expression of ``c`` minus that of its control, or None if either has fewer
        than 3 cells."""
        key = group_key(c)
        if key not in self._means:
            tm, cm = self.rows(key), self.rows(group_key(c.control()))
            self._means[key] = None if tm.sum() < MIN_EFFECT_CELLS or \
                cm.sum() < MIN_EFFECT_CELLS else \
                lognorm(self.counts[tm]).mean(0) - lognorm(self.counts[cm]).mean(0)
        return self._means[key]

    def mean_effect(self, cond: Condition, exclude_key) -> np.ndarray | None:
        """Average effect of the same perturbation in the other cell types / contexts."""
        pkey = tuple((p.target, p.type) for p in cond.perturbations)
        effects = []
        for c, key in zip(self.uniq, self.keys, strict=True):
            if key == exclude_key or c.is_control:
                continue
            if tuple((p.target, p.type) for p in c.perturbations) == pkey:
                e = self.effect(c)
                if e is not None:
                    effects.append(e)
        return np.mean(effects, axis=0) if effects else None

    def additive_effect(self, cond: Condition) -> np.ndarray | None:
        total = 0.0
        for p in cond.perturbations:
            single = Condition.make(cond.cell_type, [p], cond.context_dict())
            e = self.effect(single)
            if e is None:
                e = self.mean_effect(single, exclude_key=group_key(single))
            if e is None:
                return None
            total = total + e
        return total


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


class _Prepared:
    """What every condition of one evaluation shares: the real cells, their PCA, the reference."""

    def __init__(self, model, real, schema, reference=None) -> None:
        self.real = _Cells(model, real, schema, require_genes=True)
        self._pca = None
        self.ref = None if reference is None else _Cells(model, reference, schema)

    @property
    def pca(self):
        if self._pca is None:
            self._pca = fit_pca(self.real.counts)
        return self._pca


def _evaluate_one(model, prep: _Prepared, cond: Condition, *, mode, seed, steps, guidance,
                  top_n, n_cells, progress, cancel, baselines=None, anchor=None,
                  control_split: int | None = None) -> EvalResult:
    real = prep.real
    key = group_key(cond)
    tmask, cmask = real.rows(key), real.rows(group_key(cond.control()))
    need = MIN_GROUP_CELLS * (1 if control_split is None else 2)
    if tmask.sum() < MIN_GROUP_CELLS or cmask.sum() < need:
        raise DataError(f"need at least {MIN_GROUP_CELLS} real cells of {cond.label} and "
                        f"{need} of its control in the evaluation data; found "
                        f"{int(tmask.sum())} and {int(cmask.sum())}")
    X_t = lognorm(real.counts[tmask])
    truth_ctrl = None                    # the truth's own control half (module doc)
    base = real
    if control_split is not None:
        rows = np.random.default_rng(control_split).permutation(np.flatnonzero(cmask))
        held = np.sort(rows[len(rows) // 2:])
        cmask = cmask.copy()
        cmask[held] = False
        truth_ctrl = lognorm(real.counts[held])
        base = real.without(held)        # the baselines' effects: never from the truth's half
    X_c = lognorm(real.counts[cmask])
    X_ct = X_c if truth_ctrl is None else truth_ctrl
    degs = np.argsort(-np.abs(X_t.mean(0) - X_ct.mean(0)))[:top_n]
    pca = prep.pca

    preds: dict[str, np.ndarray] = {}
    n = int(n_cells or max(int(tmask.sum()), 2000))
    if mode == "denovo":
        gen = model.generate(cond, n, seed=seed, steps=steps, guidance=guidance,
                             progress=progress, cancel=cancel, anchor=anchor)
    else:
        gen = model.perturb(real.adata[cmask], cond, seed=seed, steps=steps, guidance=guidance,
                            progress=progress, cancel=cancel, anchor=anchor)
    preds["model"] = lognorm(gen.layers[LAYERS.COUNTS])
    preds["control"] = X_c
    if prep.ref is not None:
        base = prep.ref
        ref = base.cells(key)
        if ref is not None:
            preds["real_train"] = ref
    shift = base.mean_effect(cond, exclude_key=key)
    if shift is not None:
        preds["mean_shift"] = np.maximum(X_c + shift, 0.0)
    if len(cond.perturbations) > 1:
        add = base.additive_effect(cond)
        if add is not None:
            preds["additive"] = np.maximum(X_c + add, 0.0)
        if prep.ref is not None:          # also the convention without a reference
            add = (real if control_split is None else real.without(held)).additive_effect(cond)
            if add is not None:
                preds["additive_heldout"] = np.maximum(X_c + add, 0.0)
    for name, effect in (baselines or {}).items():      # the caller's: effect + real control
        preds[name] = np.maximum(X_c + np.asarray(effect, np.float64), 0.0)
    rows = [{"method": m, **score(p, X_t, X_c, degs, pca, real_ctrl=truth_ctrl)}
            for m, p in preds.items()]
    n_ctrl = int(cmask.sum()) + (0 if truth_ctrl is None else len(truth_ctrl))
    return EvalResult(cond.to_dict(), mode, int(tmask.sum()), n_ctrl, rows,
                      [model.genes[i] for i in degs], control_split)


def _population_one(model, prep: _Prepared, cond: Condition, *, seed, steps, guidance, top_n,
                    n_cells, progress, cancel) -> EvalResult:
    """``cond`` as the caller gave it (generated and reported so); its completed form selects
    the cells."""
    real = prep.real
    key = group_key(model.space.complete(cond))
    tmask = real.rows(key)
    if tmask.sum() == 0:
        raise DataError(f"no real cells of {cond.label} in the evaluation data")
    X_t, X_o = lognorm(real.counts[tmask]), lognorm(real.counts[~tmask])
    n = int(n_cells or max(2000, int(tmask.sum())))
    gen = lognorm(model.generate(cond, n, seed=seed, steps=steps, guidance=guidance,
                                 progress=progress, cancel=cancel).layers[LAYERS.COUNTS])
    degs = np.argsort(-np.abs(X_t.mean(0) - X_o.mean(0)))[:top_n]
    pca = prep.pca
    rows = [{"method": "model", **score(gen, X_t, X_o, degs, pca)},
            {"method": "control", **score(X_o, X_t, X_o, degs, pca)}]
    ref = None if prep.ref is None else prep.ref.cells(key)
    if ref is not None:
        rows.append({"method": "real_train", **score(ref, X_t, X_o, degs, pca)})
    return EvalResult(cond.to_dict(), "denovo", int(tmask.sum()), int((~tmask).sum()), rows,
                      [model.genes[i] for i in degs])


def _check_mode(mode: str) -> None:
    if mode not in ("denovo", "perturb"):
        raise ValueError(f"mode must be 'denovo' or 'perturb', got {mode!r}")


def evaluate(model, real, schema, condition: Condition, *, mode: str = "denovo", seed: int = 0,
             steps: int | None = None, guidance: float | None = None, top_n: int = 100,
             n_cells: int | None = None, reference=None, progress=None,
             cancel=None, baselines: dict | None = None,
             anchor: bool | None = None, control_split: int | None = None) -> EvalResult:
    """Evaluate ``model`` on the real cells of ``condition`` in ``real`` (see module doc).

    ``reference``: optional other real cells (e.g. the training cells) whose cells of the same
    condition are scored as the ``real_train`` row. ``baselines``: more baselines, name ->
    effect (model gene order, log1p space; e.g. from :func:`group_effects` of the training
    cells), each scored as the real control cells plus that effect. ``anchor``: None (the
    model's choice) or False (the flow alone; :mod:`engine.anchor`). ``control_split``: the
    seed of a random split of the target's control cells into the methods' half and the
    truth's half (None: no split; see the module doc on shared control cells)."""
    _check_mode(mode)
    cond = model.check_condition(condition)
    prep = _Prepared(model, real, schema, reference)
    return _evaluate_one(model, prep, cond, mode=mode, seed=seed, steps=steps, guidance=guidance,
                         top_n=top_n, n_cells=n_cells, progress=progress, cancel=cancel,
                         baselines=baselines, anchor=anchor, control_split=control_split)


def evaluate_splits(model, real, schema, condition: Condition, *, splits: int,
                    **options) -> EvalResult:
    """:func:`evaluate` over ``splits`` control splits (``control_split`` 0 .. splits-1; see
    the module doc on shared control cells): each method's metrics are the means over the
    splits, with their standard deviations as ``<metric>_sd`` (``None`` where a split gave
    none). The model's own draws keep ``seed``; only the split changes."""
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    runs = [evaluate(model, real, schema, condition, control_split=k, **options)
            for k in range(splits)]
    rows = []
    for row in runs[0].rows:
        method = row["method"]
        each = [r.row(method) for r in runs]
        out = {"method": method, "control_splits": splits}
        for k in METRICS:
            vals = [e.get(k) for e in each if e is not None and e.get(k) is not None]
            ok = len(vals) == splits
            out[k] = round(float(np.mean(vals)), 4) if ok else None
            out[f"{k}_sd"] = round(float(np.std(vals)), 4) if ok else None
        rows.append(out)
    first = runs[0]
    return EvalResult(first.condition, first.mode, first.n_real, first.n_control, rows,
                      first.degs, None)


def group_effects(model, cells, schema) -> list[tuple[Condition, np.ndarray]]:
    """The measured effect (mean log1p expression minus that of its control, model gene order)
    of every perturbed condition group in ``cells`` with at least 3 cells and 3 control cells:
    what the baselines of :func:`evaluate` are computed from."""
    data = _Cells(model, cells, schema)
    out = []
    for c in data.uniq:
        if not c.is_control:
            e = data.effect(c)
            if e is not None:
                out.append((c, e))
    return out


def evaluate_population(model, real, schema, condition: Condition, *, seed: int = 0,
                        steps: int | None = None, guidance: float | None = None,
                        top_n: int = 100, n_cells: int | None = None, reference=None,
                        progress=None, cancel=None) -> EvalResult:
    """Score a generated population (an atlas model's cell type, no perturbation) against the
    real cells of that type in ``real``. There is no baseline but "all other real cells",
    reported as the ``control`` row; DEGs rank the genes by |mean(type) - mean(others)|.
    With ``reference``, its cells of the type are the ``real_train`` row."""
    model.check_condition(condition)
    prep = _Prepared(model, real, schema, reference)
    return _population_one(model, prep, condition, seed=seed, steps=steps, guidance=guidance,
                           top_n=top_n, n_cells=n_cells, progress=progress, cancel=cancel)


def evaluate_many(model, real, schema, conditions: Iterable[Condition], *,
                  mode: str = "denovo", seed: int = 0, steps: int | None = None,
                  guidance: float | None = None, top_n: int = 100, n_cells: int | None = None,
                  reference=None, skipped: list | None = None, progress=None,
                  cancel=None) -> list[EvalResult]:
    """:func:`evaluate` for many conditions, preparing the real cells (filter, gene mapping,
    counts), their PCA and the reference once. Each result equals ``evaluate(model, real,
    schema, condition, ...)`` with the same options. A control condition (a population of an
    atlas model) is scored by :func:`evaluate_population` instead.

    Every condition is checked against the model before any work. ``skipped``: a list to which
    ``(condition, reason)`` is appended for each condition with too few real cells, which is
    then left out of the results; without it such a condition raises :class:`DataError`."""
    _check_mode(mode)
    given = list(conditions)
    conds = [model.check_condition(c) for c in given]
    prep = _Prepared(model, real, schema, reference)
    out = []
    opts = dict(seed=seed, steps=steps, guidance=guidance, top_n=top_n, n_cells=n_cells,
                progress=progress, cancel=cancel)
    for raw, cond in zip(given, conds, strict=True):
        try:
            out.append(_population_one(model, prep, raw, **opts) if cond.is_control
                       else _evaluate_one(model, prep, cond, mode=mode, **opts))
        except DataError as e:
            if skipped is None:
                raise
            skipped.append((raw, str(e)))
    return out


def reference_cells(model, reference, schema, condition: Condition) -> np.ndarray | None:
    """Log-normalised real cells of ``condition`` in ``reference`` (None if fewer than 5)."""
    return _Cells(model, reference, schema).cells(group_key(model.space.complete(condition)))
