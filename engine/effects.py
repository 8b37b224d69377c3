"""Predicted effects with their uncertainty, their baseline and their evidence.

A model is an ensemble of ``K`` members (``config["ensemble"]``): the members share the
autoencoder (a change of coordinates between expression and latent space) and each has its own
conditional flow, trained with its own seed on a bootstrap of the cells of every condition.
Generating ``n`` cells draws ``n / K`` cells from each member and records the member in
``obs["member"]``. For a condition and its matching control, each member's *effect* is its
mean log1p(normalize_total 1e4) expression of the condition minus that of the control; the
spread of the member effects is the model's uncertainty about the effect (deep ensembles,
Lakshminarayanan et al. 2017). It does not shrink with the number of generated cells: the
Monte-Carlo noise of each member's mean (which does) is estimated from the cells and removed
from the between-member variance, as in a random-effects meta-analysis.

The 90 % interval is ``effect +- z * scale * s`` where ``s`` is that between-member standard
deviation (plus the Monte-Carlo error of the pooled mean) and ``scale`` is a calibration factor
per evidence class, measured on held-out cells by ``build_scripts/calibrate.py`` and stored in
``config["ensemble"]["calibration"]``. ``tests/engine/test_effects.py`` checks the coverage on
simulated data with a known truth.

Nothing here computes a p-value between groups of generated cells: such a test only measures
how many cells were drawn.

Public API: :func:`predict_effects`, :func:`effects_from_cells`, :func:`real_effect`,
:func:`classify`, :class:`EffectResult`, :class:`Evidence`, :class:`Baseline`,
:class:`RealEffect`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .conditions.spec import Condition, group_key
from .errors import ConditionError, DataError

LN2 = math.log(2.0)
#: Interval level of every effect interval.
INTERVAL = 0.9
#: Standard normal quantile of the two-sided 90 % interval.
Z90 = 1.6448536269514722

#: Evidence classes, from the strongest to the weakest, and how each reads in plain words.
EVIDENCE_LABELS = {
    "population": "measured in training (an unperturbed population)",
    "measured": "measured in training",
    "new_combination": "new combination of measured parts",
    "new_cell_type": "new cell type for this perturbation",
    "new_combination_new_cell_type": "new combination, in a cell type where not every part "
                                     "was measured",
    "new_gene": "never perturbed in training: predicted from gene-set priors",
    "beyond_evidence": "beyond the training evidence (a part was never measured this way)",
}
EVIDENCE_KINDS = tuple(EVIDENCE_LABELS)


# -- evidence ---------------------------------------------------------------------------------
@dataclass
class Evidence:
    """How much the training data says about a condition, and how well the model did on that
    kind of condition on held-out cells (from the card)."""

    kind: str                              # one of EVIDENCE_KINDS
    label: str                             # plain words
    score: dict | None = None              # the card's held-out metrics for this kind
    baseline_score: dict | None = None     # the best baseline's, on the same conditions
    below_baseline: bool = False           # the model scored below that baseline
    verdict: str = ""                      # one plain sentence
    coverage: dict | None = None           # the card's interval coverage for this kind
    below_on: tuple[str, ...] = ()         # where the baseline did better, in plain words

    @property
    def expected_r2(self) -> float | None:
        """The R2 top-100 to expect for this kind of condition: the card's nested estimate
        (``r2_top100_nested``: a sampling rule chosen on other folds than the one scored)
        where it has one, else its held-out ``r2_top100``; None when unscored."""
        return expected_r2(self.score)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "score": self.score,
                "baseline_score": self.baseline_score, "below_baseline": self.below_baseline,
                "verdict": self.verdict, "coverage": self.coverage,
                "below_on": list(self.below_on)}


def expected_r2(score: dict | None) -> float | None:
    """:attr:`Evidence.expected_r2` of a card score entry (already cleaned by ``_scores``)."""
    if not score:
        return None
    nested = score.get("r2_top100_nested")
    return nested if nested is not None else score.get("r2_top100")


#: Plain words for the metrics a card row lists as below its baseline (metrics_below_baseline)
METRIC_WORDS = {"r2_top100": "R2 of the top-100 changed genes",
                "pearson_delta_top100": "Pearson delta (direction of change)",
                "pearson_delta_top100_split": "Pearson delta with control cells not shared",
                "energy_ratio": "energy ratio (distance to the real cells)"}


def paired_r2(score: dict | None, base: dict | None) -> float | None:
    """The model's R2 to set against ``base``'s: on the baseline's own conditions where the
    card has it (``model_r2_on_same``; e.g. additive exists only for the doubles of a mostly
    single-perturbation test set), else :func:`expected_r2`."""
    if base and base.get("model_r2_on_same") is not None:
        return base["model_r2_on_same"]
    return expected_r2(score)


def _pkey(p) -> tuple:
    return (p["target"], p.get("type")) if isinstance(p, dict) else (p.target, p.type)


def _ctx(d) -> tuple:
    return tuple(sorted((d.get("context") or {}).items()))


def classify(space, cond: Condition) -> str:
    """The evidence class of a (completed, valid) condition in a model's training space."""
    seen = space.seen
    if space.new_targets(cond):
        return "new_gene"                           # a target never perturbed in training
    if space.is_seen(cond):
        return "population" if cond.is_control else "measured"
    if cond.is_control:
        return "new_cell_type"                      # an unseen context of a known type
    parts = [_pkey(p) for p in cond.perturbations]
    singles_here = set()
    singles_anywhere = set()
    for d in seen:
        ps = d.get("perturbations") or []
        if len(ps) != 1:
            continue
        k = _pkey(ps[0])
        singles_anywhere.add(k)
        if d.get("cell_type") == cond.cell_type and _ctx(d) == cond.context:
            singles_here.add(k)
    combo = tuple(sorted(parts))
    combo_elsewhere = any(tuple(sorted(_pkey(p) for p in d.get("perturbations") or [])) == combo
                          for d in seen)
    if len(parts) == 1 or combo_elsewhere:
        if combo_elsewhere:
            return "new_cell_type"
        return "beyond_evidence"
    if all(k in singles_here for k in parts):
        return "new_combination"
    if all(k in singles_anywhere for k in parts):
        return "new_combination_new_cell_type"
    return "beyond_evidence"


def _verdict(kind: str, score: dict | None, base: dict | None, below: bool) -> str:
    if kind in ("population", "measured"):
        if score is None:
            return ("Measured in training; this model was not scored on held-out cells, so how "
                    "close it comes is unknown.")
        return (f"Measured in training: on held-out cells of such conditions the model reached "
                f"R2 {score['r2_top100']:.2f} on the top-100 changed genes"
                + (f" (real training cells {score['yardstick']:.2f})"
                   if score.get("yardstick") is not None else "") + ".")
    what = EVIDENCE_LABELS[kind]
    if score is None:
        return (f"{what[0].upper()}{what[1:]}: this model was not tested on such conditions; "
                "treat the prediction as a hypothesis and check it against the baseline.")
    s = (f"{what[0].upper()}{what[1:]}: on held-out tests of this kind the model reached R2 "
         f"{expected_r2(score):.2f}")
    if score.get("r2_top100_nested") is not None:
        s += f" ({score['r2_top100']:.2f} on the folds its sampling rule was chosen on)"
    if base is not None:
        s += f", the {base['name'].replace('_', ' ')} baseline {base['r2_top100']:.2f}"
    s += "."
    if below:
        s += " The simple baseline did better: prefer it, and treat the model as a second opinion."
    return s


def _number(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _scores(entry, *, named: bool = False) -> dict | None:
    """A card score entry with a numeric ``r2_top100`` (and a ``name`` for a baseline), or None:
    a malformed card is treated as unscored, never as an error."""
    if not isinstance(entry, dict) or _number(entry.get("r2_top100")) is None:
        return None
    if named and not isinstance(entry.get("name"), str):
        return None
    out = {k: v for k, v in entry.items() if k == "name" or _number(v) is not None}
    return {k: (v if k == "name" else _number(v)) for k, v in out.items()}


def judge_entry(entry) -> tuple[dict | None, dict | None, tuple[str, ...]]:
    """One card evidence row judged against its baseline: ``(score, baseline, below_on)``.

    ``score`` and ``baseline`` are the row's numeric entries (None when malformed or unscored);
    a baseline that covers fewer conditions than the model's row gets ``model_r2_on_same``
    (the model's R2 on those conditions, the one compared with it). ``below_on`` says in plain
    words (:data:`METRIC_WORDS`) where the baseline did better: R2 (the nested estimate where
    the row has one), the cell types and the metrics the row lists as below it."""
    entry = entry if isinstance(entry, dict) else {}
    raw_model = entry.get("model") if isinstance(entry.get("model"), dict) else {}
    raw_base = entry.get("baseline") if isinstance(entry.get("baseline"), dict) else {}
    score = _scores(raw_model)
    base = _scores(raw_base, named=True) if score is not None else None
    if not score or not base:
        return score, base, ()
    same = raw_base.get("model_on_same")
    if isinstance(same, dict) and _number(same.get("r2_top100")) is not None and \
            base.get("n") is not None and base.get("n") != score.get("n"):
        base["model_r2_on_same"] = _number(same["r2_top100"])
    why: list[str] = []
    if paired_r2(score, base) < base["r2_top100"]:
        why.append(METRIC_WORDS["r2_top100"])
    losses = raw_model.get("cell_types_below_baseline")
    if isinstance(losses, list) and losses:
        why.append("R2 for " + ", ".join(map(str, losses)))
    worse = raw_model.get("metrics_below_baseline")        # e.g. the new_gene row
    if isinstance(worse, list):
        why += [METRIC_WORDS.get(str(m), str(m).replace("_", " ")) for m in worse]
    return score, base, tuple(dict.fromkeys(why))


def evidence_for(model, cond: Condition) -> Evidence:
    """The :class:`Evidence` of ``cond`` (valid for ``model``), with the card's score for its
    class. Cheap: no generation. Malformed card entries count as "not scored"."""
    cond = model.check_condition(cond)
    kind = classify(model.space, cond)
    table = (model.card or {}).get("evidence")
    entry = table.get(kind) if isinstance(table, dict) else None
    entry = entry if isinstance(entry, dict) else {}
    score, base, why = judge_entry(entry)
    below = bool(why)
    cov = entry.get("coverage") if isinstance(entry.get("coverage"), dict) else None
    verdict = entry.get("verdict") if isinstance(entry.get("verdict"), str) else \
        _verdict(kind, score, base, below)
    return Evidence(kind, EVIDENCE_LABELS[kind], score, base, below, verdict, cov, why)


# -- effects ----------------------------------------------------------------------------------
@dataclass
class Baseline:
    name: str                               # "additive" or "mean_shift"
    effect: np.ndarray                      # (G,) log1p-space effect
    detail: str = ""                        # what it was computed from


@dataclass
class EffectResult:
    """A predicted effect per gene with its 90 % interval, its baseline and its evidence.

    ``effect``, ``low``, ``high`` and ``baseline.effect`` are differences of mean
    log1p(normalize_total 1e4) expression (natural log); ``log2fc`` and friends divide by ln 2
    (a difference of mean log2(1 + x)). With a single-member model there is no interval:
    ``low`` and ``high`` are NaN and ``has_interval`` is False."""

    condition: Condition
    control: Condition
    genes: list[str]
    effect: np.ndarray
    low: np.ndarray
    high: np.ndarray
    member_effects: np.ndarray               # (K, G)
    mean: np.ndarray                         # (G,) predicted mean of the condition
    control_mean: np.ndarray                 # (G,) predicted mean of the control
    evidence: Evidence
    baseline: Baseline | None = None
    n_cells: int = 0                         # generated cells of the condition (all members)
    interval: float = INTERVAL
    calibration: float = 1.0                 # the scale applied to the member spread
    extra: dict = field(default_factory=dict)

    @property
    def members(self) -> int:
        return int(self.member_effects.shape[0])

    @property
    def has_interval(self) -> bool:
        return self.members > 1 and bool(np.isfinite(self.low).any())

    @property
    def verdict(self) -> str:
        return self.evidence.verdict

    @property
    def sign_agreement(self) -> np.ndarray:
        """Fraction of members whose effect has the sign of the ensemble's effect, per gene."""
        s = np.sign(self.effect)[None, :]
        return (np.sign(self.member_effects) == s).mean(0)

    @property
    def members_agree(self) -> np.ndarray:
        """True where every member gives the effect's sign (and the effect is not zero)."""
        return (self.sign_agreement == 1.0) & (self.effect != 0)

    @property
    def log2fc(self) -> np.ndarray:
        return self.effect / LN2

    @property
    def log2_low(self) -> np.ndarray:
        return self.low / LN2

    @property
    def log2_high(self) -> np.ndarray:
        return self.high / LN2

    @property
    def width(self) -> np.ndarray:
        return self.high - self.low

    @property
    def confidence(self) -> np.ndarray:
        """|effect| / interval width (NaN without an interval): above ~0.5 the interval
        excludes zero."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.effect) / np.maximum(self.width, 1e-12)

    def to_json(self) -> dict:
        """The ``perturb-studio effects --json`` object (these names are an interface)."""
        def lst(a):
            return [None if not np.isfinite(v) else round(float(v), 6) for v in a]

        return {"model": self.extra.get("model", ""),
                "condition": self.condition.to_dict(), "control": self.control.to_dict(),
                "genes": list(self.genes), "effect": lst(self.effect),
                "low": lst(self.low), "high": lst(self.high), "interval": self.interval,
                "members": self.members, "members_agree": [bool(v) for v in self.members_agree],
                "baseline": None if self.baseline is None else
                {"name": self.baseline.name, "effect": lst(self.baseline.effect),
                 "detail": self.baseline.detail},
                "evidence": self.evidence.to_dict(), "verdict": self.verdict,
                "n_cells": int(self.n_cells), "calibration": self.calibration,
                "units": "difference of mean log1p(normalize_total 1e4) expression "
                         "(natural log); divide by ln 2 for log2 fold change",
                **{k: v for k, v in self.extra.items() if k != "model"}}

    def table(self):
        """One row per gene, largest |effect| first, in log2 units."""
        import pandas as pd

        df = pd.DataFrame({
            "gene": self.genes, "log2fc": self.log2fc, "low": self.log2_low,
            "high": self.log2_high, "members_agree": self.members_agree,
            "sign_agreement": self.sign_agreement,
            "baseline_log2fc": (self.baseline.effect / LN2 if self.baseline is not None
                                else np.full(len(self.genes), np.nan)),
            "confidence": self.confidence,
            "mean": self.mean, "control_mean": self.control_mean})
        return df.iloc[np.argsort(-np.abs(self.effect), kind="stable")].reset_index(drop=True)


@dataclass
class RealEffect:
    """The effect measured in real cells: mean log-expression of the condition minus its
    control, per model gene (NaN where the gene is missing), with its standard error."""

    effect: np.ndarray
    se: np.ndarray
    n_cells: int
    n_control: int


def member_means(adata, members: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-member mean, variance of the mean (Monte-Carlo), and cell count of generated cells
    (log1p-normalised), ``(K, G)``, ``(K, G)``, ``(K,)``."""
    from .data.io import get_counts
    from .data.preprocess import log1p_normalize
    from .keys import OBS

    x = log1p_normalize(get_counts(adata)[0].tocsr(), dtype=np.float64)
    if OBS.MEMBER in adata.obs:
        m = np.asarray(adata.obs[OBS.MEMBER]).astype(np.int64)
    else:
        m = np.zeros(adata.n_obs, np.int64)
    g = x.shape[1]
    means = np.zeros((members, g))
    var = np.zeros((members, g))
    n = np.zeros(members, np.int64)
    for k in range(members):
        rows = np.flatnonzero(m == k)
        n[k] = len(rows)
        if not len(rows):
            continue
        xk = x[rows]
        mu = np.asarray(xk.mean(0)).ravel()
        sq = np.asarray(xk.multiply(xk).mean(0)).ravel() if hasattr(xk, "multiply") \
            else (np.asarray(xk) ** 2).mean(0)
        means[k] = mu
        var[k] = np.maximum(sq - mu ** 2, 0.0) / max(len(rows) - 1, 1)
    return means, var, n


def interval_from_members(member_effects: np.ndarray, mc_var: np.ndarray, scale: float,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(effect, low, high)`` from ``K`` member effects (K, G) and the Monte-Carlo variance of
    each (K, G): the between-member variance less the mean Monte-Carlo variance (the
    epistemic part, which does not shrink with more cells), plus the Monte-Carlo variance of
    the pooled mean, times ``scale`` (the calibration)."""
    k = member_effects.shape[0]
    effect = member_effects.mean(0)
    if k < 2:
        nan = np.full(effect.shape, np.nan)
        return effect, nan, nan
    between = member_effects.var(0, ddof=1)
    mc = mc_var.mean(0)
    epistemic = np.maximum(between - mc, 0.0)
    half = Z90 * scale * np.sqrt(epistemic + mc / k)
    return effect, effect - half, effect + half


def effects_from_cells(model, adata, condition: Condition, *,
                       control: Condition | None = None) -> EffectResult:
    """The :class:`EffectResult` of ``condition`` from generated cells that hold both it and its
    control (as :meth:`PerturbModel.generate_many` writes them, ``obs["member"]`` included)."""
    from .keys import OBS

    cond = model.check_condition(condition)
    ctrl = model.check_condition(control or cond.control())
    labels = np.asarray(adata.obs[OBS.CONDITION]).astype(str)
    rows_t = labels == cond.label
    rows_c = labels == ctrl.label
    if not rows_t.any() or not rows_c.any():
        raise DataError(f"the generated cells hold no cells of {cond.label!r} or of its control "
                        f"{ctrl.label!r}; generate both (include the control)")
    k = model.members
    mt, vt, nt = member_means(adata[rows_t], k)
    mc, vc, nc = member_means(adata[rows_c], k)
    ok = (nt > 0) & (nc > 0)
    if not ok.any():
        raise DataError("no ensemble member generated both the condition and its control")
    member_effects = mt[ok] - mc[ok]
    scale = model.calibration(classify(model.space, cond))
    effect, low, high = interval_from_members(member_effects, vt[ok] + vc[ok], scale)
    w = nt[ok] / nt[ok].sum()
    return EffectResult(cond, ctrl, list(model.genes), effect, low, high, member_effects,
                        (mt[ok] * w[:, None]).sum(0), (mc[ok] * w[:, None]).sum(0),
                        evidence_for(model, cond), baseline_for(model, cond),
                        n_cells=int(nt.sum()), calibration=float(scale),
                        extra={"model": model.name})


def effects_from_perturbed(model, perturbed, source, condition: Condition) -> EffectResult:
    """The :class:`EffectResult` of "perturb my cells": ``perturbed`` is what
    :meth:`PerturbModel.perturb` returned for the real cells ``source``. Each member's effect
    is the mean of the cells it perturbed minus the mean of the same real cells before (so the
    control is real, and the interval is the members' disagreement about the change)."""
    import scipy.sparse as sp

    from .data.io import get_counts
    from .data.preprocess import log1p_normalize
    from .keys import OBS

    cond = model.check_condition(condition)
    if perturbed.n_obs != source.n_obs:
        raise DataError(f"{perturbed.n_obs:,} perturbed cells but {source.n_obs:,} source "
                        "cells; pass the cells that were perturbed")
    mapping = model.gene_mapping(source)
    ok = mapping.index >= 0
    counts = get_counts(source)[0].tocsr()
    src = (counts[:, np.where(ok, mapping.index, 0)] @ sp.diags(ok.astype(np.float64))).tocsr()
    x_src = log1p_normalize(src, dtype=np.float64)
    k = model.members
    member = (np.asarray(perturbed.obs[OBS.MEMBER]).astype(np.int64) if OBS.MEMBER in
              perturbed.obs else np.zeros(perturbed.n_obs, np.int64))
    mt, vt, nt = member_means(perturbed, k)
    mc = np.zeros_like(mt)
    for m in range(k):
        rows = np.flatnonzero(member == m)
        if len(rows):
            mc[m] = np.asarray(x_src[rows].mean(0)).ravel()
    ok_m = nt > 0
    member_effects = mt[ok_m] - mc[ok_m]
    scale = model.calibration(classify(model.space, cond))
    # the real control cells are the same for prediction and baseline: only the members' spread
    # (and the Monte-Carlo error of the perturbed cells) is uncertainty
    effect, low, high = interval_from_members(member_effects, vt[ok_m], scale)
    w = nt[ok_m] / nt[ok_m].sum()
    return EffectResult(cond, cond.control(), list(model.genes), effect, low, high,
                        member_effects, (mt[ok_m] * w[:, None]).sum(0),
                        np.asarray(x_src.mean(0)).ravel(), evidence_for(model, cond),
                        baseline_for(model, cond), n_cells=int(nt.sum()),
                        calibration=float(scale),
                        extra={"model": model.name, "mode": "perturb"})


def predict_effects(model, condition: Condition, *, n: int = 2000, seed: int = 0,
                    steps: int | None = None, guidance: float | None = None, progress=None,
                    cancel=None) -> EffectResult:
    """Generate ``n`` cells of ``condition`` and ``n`` of its control (``n / K`` from each member)
    and return the predicted effect with its interval, baseline and evidence."""
    cond = model.check_condition(condition)
    adata = model.generate_many([cond], n, include_control=True, seed=seed, steps=steps,
                                guidance=guidance, progress=progress, cancel=cancel)
    res = effects_from_cells(model, adata, cond)
    res.extra.update(seed=int(seed), steps=adata.uns["perturb_studio"]["steps"],
                     guidance=adata.uns["perturb_studio"]["guidance"])
    return res


def predict_effects_many(model, conditions, *, n: int = 2000, seed: int = 0,
                         steps: int | None = None, guidance: float | None = None,
                         progress=None, cancel=None) -> list[EffectResult]:
    """:func:`predict_effects` for many conditions in one run: each distinct control is
    generated once and shared by the conditions of its cell type."""
    conds = [model.check_condition(c) for c in conditions]
    perturbed = [c for c in conds if not c.is_control]
    if not perturbed:
        return []
    adata = model.generate_many(perturbed, n, include_control=True, seed=seed, steps=steps,
                                guidance=guidance, progress=progress, cancel=cancel)
    out = []
    for c in perturbed:
        res = effects_from_cells(model, adata, c)
        res.extra.update(seed=int(seed))
        out.append(res)
    return out


# -- calibration: how often the interval holds the real effect ------------------------------------
def coverage_record(pred: EffectResult, real: RealEffect, *, top: int = 100,
                    select: np.ndarray | None = None) -> dict | None:
    """What calibration needs of one held-out condition, on its ``top`` DEGs: the miss
    ``|real - predicted|``, the interval's half-width at calibration 1, the real effect's
    standard error, and |real effect|.

    The DEGs are the genes with the largest ``|select|`` (e.g. the effect measured in the
    training cells), or, without ``select``, the largest held-out real effect. Choosing them on
    cells that are not scored avoids the winner's curse: among thousands of genes, the top-100 of
    a noisy held-out effect are the genes whose noise pushed them out, and they look missed."""
    if pred.members < 2:
        return None
    rank = np.abs(real.effect if select is None else np.asarray(select, float))
    ok = np.isfinite(real.effect) & np.isfinite(pred.low) & np.isfinite(rank)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-rank[idx], kind="stable")[:top]]
    half1 = (pred.high - pred.low)[idx] / 2 / max(pred.calibration, 1e-12)
    return {"condition": pred.condition.label, "kind": pred.evidence.kind,
            "n_real": real.n_cells, "n_control": real.n_control,
            "degs_from": "held-out cells" if select is None else "other cells",
            "miss": np.abs(real.effect[idx] - pred.effect[idx]).tolist(),
            "half1": half1.tolist(), "se_real": real.se[idx].tolist(),
            "abs_real": np.abs(real.effect[idx]).tolist()}


def coverage_at(records: list[dict], scale: float, *, noise_aware: bool) -> dict:
    """Coverage of a set of :func:`coverage_record` records with the interval scaled by
    ``scale``: the fraction of (condition, gene) pairs whose real effect lies inside, the median
    width and the median |real effect|. ``noise_aware`` widens each interval by the real
    effect's own 90 % sampling error (a held-out group of 20 cells measures an effect with
    error; a perfect interval for the true effect would still miss the measured one)."""
    if not records:
        return {"coverage": None, "median_width": None, "median_abs_real": None, "pairs": 0}
    miss = np.concatenate([r["miss"] for r in records])
    half = scale * np.concatenate([r["half1"] for r in records])
    if noise_aware:
        half = np.sqrt(half ** 2 + (Z90 * np.concatenate([r["se_real"] for r in records])) ** 2)
    return {"coverage": round(float((miss <= half).mean()), 4),
            "median_width": round(float(np.median(2 * scale * np.concatenate(
                [r["half1"] for r in records]))), 4),
            "median_abs_real": round(float(np.median(np.concatenate(
                [r["abs_real"] for r in records]))), 4),
            "pairs": int(len(miss))}


def fit_scale(records: list[dict], *, target: float = INTERVAL) -> float | None:
    """The smallest calibration factor giving noise-aware coverage ``target`` on ``records``
    (a split-conformal quantile of the scale each gene needs)."""
    if not records:
        return None
    miss = np.concatenate([r["miss"] for r in records])
    half1 = np.concatenate([r["half1"] for r in records])
    noise = Z90 * np.concatenate([r["se_real"] for r in records])
    need = np.sqrt(np.maximum(miss ** 2 - noise ** 2, 0.0)) / np.maximum(half1, 1e-9)
    return float(max(np.quantile(need, target, method="higher"), 1e-3))


def cross_fitted_coverage(records: list[dict], *, folds: int = 2, seed: int = 0) -> dict:
    """Coverage measured honestly: the conditions are split into ``folds`` groups; each group's
    coverage uses the scale fitted on the others. Returns the pooled raw and noise-aware
    coverage and the scale fitted on all records (what the model stores)."""
    if len(records) < 2:
        return {"scale": fit_scale(records), "coverage": None, "coverage_noise_aware": None}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    groups = [order[i::folds] for i in range(folds)]
    raw, aware, widths, reals = [], [], [], []
    for g in groups:
        held = [records[i] for i in g]
        rest = [records[i] for i in range(len(records)) if i not in set(g.tolist())]
        sc = fit_scale(rest)
        a = coverage_at(held, sc, noise_aware=False)
        b = coverage_at(held, sc, noise_aware=True)
        raw.append((a["coverage"], a["pairs"]))
        aware.append((b["coverage"], b["pairs"]))
        widths.append(a["median_width"])
        reals.append(a["median_abs_real"])

    def pooled(xs):
        tot = sum(p for _, p in xs)
        return round(sum(c * p for c, p in xs) / max(tot, 1), 4)

    return {"scale": round(fit_scale(records), 4), "coverage": pooled(raw),
            "coverage_noise_aware": pooled(aware),
            "median_width": round(float(np.median(widths)), 4),
            "median_abs_real": round(float(np.median(reals)), 4),
            "conditions": len(records), "folds": folds}


# -- baselines from the model's own training statistics ----------------------------------------
def baseline_for(model, cond: Condition) -> Baseline | None:
    """``additive`` for a combination whose parts were measured (in this cell type, else
    averaged over the others), ``mean_shift`` for a perturbation measured in other cell types or
    contexts, else None. Effects come from the training group means stored with the model."""
    stats = model.group_stats()
    if stats is None or cond.is_control:
        return None
    if model.space.new_targets(cond):
        return new_gene_baseline(model, cond, stats)
    if len(cond.perturbations) > 1:
        total = 0.0
        where = []
        for p in cond.perturbations:
            single = Condition.make(cond.cell_type, [p], cond.context_dict())
            e = stats.effect(single)
            if e is None:
                e = stats.mean_effect(single, exclude=True)
                where.append(f"{p.target}: other cell types")
            else:
                where.append(f"{p.target}: this cell type")
            if e is None:
                return None
            total = total + e
        return Baseline("additive", np.asarray(total), "sum of the measured single effects ("
                        + "; ".join(where) + ")")
    if stats.effect(cond) is not None:       # measured here: the baseline is the data itself
        e = stats.mean_effect(cond, exclude=True)
        return None if e is None else Baseline(
            "mean_shift", e, "average effect of the same perturbation in the other cell types "
                             "or contexts of the training data")
    e = stats.mean_effect(cond, exclude=True)
    return None if e is None else Baseline(
        "mean_shift", e, "average effect of the same perturbation in the cell types or "
                         "contexts where it was measured")


def new_gene_baseline(model, cond: Condition, stats=None) -> Baseline | None:
    """The baseline of a condition with a gene never perturbed in training: the one named by
    the card's ``new_gene`` evidence row (the better in leave-one-gene-out), by default
    ``average_perturbation``: the mean effect of every single perturbation trained in this cell
    type and context (of the same type); ``nearest_prior``: the effect of the trained target
    most similar to the new gene in the gene-set priors (cosine), in this cell type."""
    stats = model.group_stats() if stats is None else stats
    if stats is None or len(cond.perturbations) != 1:
        return None
    p = cond.perturbations[0]
    entry = ((model.card or {}).get("evidence") or {}).get("new_gene")
    base = entry.get("baseline") if isinstance(entry, dict) else None
    name = base.get("name") if isinstance(base, dict) else None
    here = [d for d in stats.conditions if len(d.perturbations) == 1
            and d.cell_type == cond.cell_type and d.context == cond.context
            and d.perturbations[0].type == p.type]
    effects = {d.perturbations[0].target: e for d in here
               if (e := stats.effect(d)) is not None}
    if not effects:
        return None
    if name == "nearest_prior":
        from .priors import load_gene_priors

        try:
            near = load_gene_priors().nearest(p.target, 1, among=sorted(effects))
        except DataError:
            near = None
        if near:
            sym = model.space.canonical_target(near[0][0])
            if sym in effects:
                return Baseline("nearest_prior", effects[sym],
                                f"measured effect of {sym}, the trained target most similar to "
                                f"{p.target} in the gene-set priors (cosine {near[0][1]:.2f})")
    return Baseline("average_perturbation", np.mean(list(effects.values()), axis=0),
                    f"mean measured effect of the {len(effects)} perturbations trained in this "
                    "cell type")


def real_effect(model, adata, schema, condition: Condition, *,
                min_cells: int = 3) -> RealEffect | None:
    """The effect of ``condition`` measured in real cells (``adata`` with roles ``schema``), in
    the model's gene order; None when fewer than ``min_cells`` cells of the condition or of its
    control are there."""
    import scipy.sparse as sp

    from .data.io import get_counts
    from .data.preprocess import log1p_normalize

    cond = model.check_condition(condition)
    real = schema.filter(adata)
    codes, uniq = schema.condition_codes(real)
    keys = []
    for c in uniq:
        try:
            keys.append(group_key(model.space.complete(c)))
        except ConditionError:
            keys.append(None)
    want, want_c = group_key(cond), group_key(cond.control())
    t = np.isin(codes, [i for i, k in enumerate(keys) if k == want])
    c = np.isin(codes, [i for i, k in enumerate(keys) if k == want_c])
    if t.sum() < min_cells or c.sum() < min_cells:
        return None
    mapping = model.gene_mapping(real)
    ok = mapping.index >= 0
    counts = get_counts(real)[0].tocsr()[np.flatnonzero(t | c)]
    # normalised over the model's genes, as generated cells are (engine.evaluate does the same)
    sub_counts = (counts[:, np.where(ok, mapping.index, 0)]
                  @ sp.diags(ok.astype(np.float64))).tocsr()        # missing genes: zero
    block = log1p_normalize(sub_counts, dtype=np.float64)
    sub = block.toarray() if sp.issparse(block) else np.asarray(block, dtype=np.float64)
    sub[:, ~ok] = np.nan
    rt = t[t | c]
    xt, xc = sub[rt], sub[~rt]
    eff = xt.mean(0) - xc.mean(0)
    se = np.sqrt(xt.var(0, ddof=1) / len(xt) + xc.var(0, ddof=1) / len(xc))
    return RealEffect(eff, se, int(len(xt)), int(len(xc)))


def coverage(pred: EffectResult, real: RealEffect, *, top: int = 100,
             noise_aware: bool = False) -> dict:
    """Coverage of the real effect by the predicted interval on the ``top`` genes with the
    largest real effect. With ``noise_aware`` the interval is widened by the real effect's own
    sampling error (what a replicate of the held-out cells would measure)."""
    ok = np.isfinite(real.effect) & np.isfinite(pred.low)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-np.abs(real.effect[idx]))[:top]]
    half = (pred.high - pred.low)[idx] / 2
    centre = pred.effect[idx]
    if noise_aware:
        half = np.sqrt(half ** 2 + (Z90 * real.se[idx]) ** 2)
    inside = np.abs(real.effect[idx] - centre) <= half
    return {"coverage": float(inside.mean()) if len(idx) else float("nan"),
            "median_width": float(np.median(2 * half)) if len(idx) else float("nan"),
            "median_abs_real": float(np.median(np.abs(real.effect[idx]))) if len(idx)
            else float("nan"), "genes": int(len(idx))}


__all__ = ["Baseline", "EffectResult", "Evidence", "RealEffect", "INTERVAL",
           "EVIDENCE_KINDS", "EVIDENCE_LABELS", "baseline_for", "classify", "coverage",
           "effects_from_cells", "effects_from_perturbed", "evidence_for", "interval_from_members", "member_means",
           "new_gene_baseline",
           "predict_effects", "predict_effects_many", "real_effect", "coverage_record",
           "coverage_at", "fit_scale", "cross_fitted_coverage"]
