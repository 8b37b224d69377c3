"""What the Results page shows about one condition: the effect table, the effect plot and the
sentences above them. No Qt: :func:`effect_view` runs on a worker thread (app.controller), the
page only formats what it gets.

A generated condition is compared with its generated control through
:func:`engine.effects.effects_from_cells`: per gene the predicted effect (log2 fold change), its
90 % interval (the spread of the ensemble's members, calibrated on held-out cells), whether every
member gives the same sign, the simple baseline's effect and, when the open dataset holds real
cells of that condition and of its control, the real effect. No p-value between groups of
generated cells is computed or shown: such a test only measures how many cells were drawn.

Without a generated control (perturbing your own cells, or unperturbed populations compared with
each other) the table holds the change of the mean only, and says why there is no interval.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
#: Above this |effect| / interval width, the 90 % interval excludes zero.
CONFIDENT = 0.5
#: The effect plot's confidence axis is capped here (genes whose members agree exactly would
#: sit at infinity); capped genes are drawn as triangles.
CONFIDENCE_CAP = 5.0
SINGLE_MEMBER = ("This model has a single member: no uncertainty estimate (no interval, no "
                 "agreement between members). Treat each effect as one model's guess.")
BASELINE_NAMES = {"additive": "additive", "mean_shift": "mean shift", "control": "no-change",
                  "average_perturbation": "average perturbation",
                  "nearest_prior": "nearest gene in the priors"}


@dataclass(frozen=True)
class Column:
    """One column of the effect table: ``key`` (a column of the frame), its header, its tooltip
    and how its values read (``text``, ``lfc`` signed log2, ``num``, ``yesno``, ``interval``:
    ``key`` and ``key2`` shown as ``low – high``)."""

    key: str
    header: str
    tooltip: str
    kind: str = "num"
    key2: str = ""


@dataclass(frozen=True, eq=False)
class PlotSpec:
    """What the effect plot draws: points (x, y) named by gene with a class each ('up', 'down',
    'ns'), axis labels, the reference lines; or only ``message``."""

    message: str = ""
    genes: list = field(default_factory=list)
    x: Any = None
    y: Any = None
    classes: Any = None
    capped: Any = None                  # bool per point: y was capped (drawn as a triangle)
    xlabel: str = ""
    ylabel: str = ""
    title: str = ""
    hlines: tuple = ()
    vlines: tuple = ()
    diagonal: bool = False
    score: Any = None                   # which genes get a text label (largest first)
    legend: str = ""                    # one line under the plot saying what the colours mean


@dataclass(frozen=True, eq=False)
class EffectView:
    """The table, plot and words for one condition (see the module docstring)."""

    label: str
    frame: Any                          # pandas DataFrame with plain column names (the CSV)
    columns: tuple                      # Column, the ones shown
    plot: PlotSpec
    comparison: str = ""                # "X vs its generated control: ..."
    evidence: Any = None                # engine.effects.Evidence (None: not known)
    members: int = 0                    # ensemble members (0: no generated control)
    notes: tuple = ()                   # plain sentences, in order
    result: Any = None                  # engine.effects.EffectResult
    real: Any = None                    # engine.effects.RealEffect

    @property
    def has_interval(self) -> bool:
        return self.result is not None and bool(self.result.has_interval)


# -- the frame ----------------------------------------------------------------------------------
def baseline_column(name: str | None) -> str:
    return f"baseline_{name}_log2fc" if name else "baseline_log2fc"


def effect_frame(res, real=None):
    """One row per gene (largest |effect| first) with names that say what they are: the CSV the
    user saves and the table's source. ``res``: EffectResult; ``real``: RealEffect or None."""
    import pandas as pd

    t = res.table()
    k = res.members
    genes = t["gene"].astype(str)
    agree = t["members_agree"].to_numpy().astype(object)
    if not res.has_interval:
        agree[:] = None
    base_name = res.baseline.name if res.baseline is not None else None
    df = pd.DataFrame({
        "gene": genes.to_numpy(),
        "predicted_log2fc": t["log2fc"].to_numpy(float),
        "interval90_low_log2fc": t["low"].to_numpy(float),
        "interval90_high_log2fc": t["high"].to_numpy(float),
        "members_agree_on_sign": agree,
        "fraction_of_members_with_this_sign": (t["sign_agreement"].to_numpy(float) if k > 1
                                               else np.full(len(t), np.nan)),
        "confidence_abs_effect_over_interval_width": t["confidence"].to_numpy(float),
        baseline_column(base_name): t["baseline_log2fc"].to_numpy(float),
    })
    if real is not None:
        by_gene = {g: i for i, g in enumerate(res.genes)}
        idx = np.array([by_gene[g] for g in genes], dtype=np.int64)
        df["real_log2fc"] = np.asarray(real.effect, float)[idx] / LN2
        df["real_log2fc_standard_error"] = np.asarray(real.se, float)[idx] / LN2
    df["predicted_mean_log1p_condition"] = t["mean"].to_numpy(float)
    df["predicted_mean_log1p_control"] = t["control_mean"].to_numpy(float)
    return df


def effect_columns(res, real=None, *, data_name: str = "") -> tuple[Column, ...]:
    """The columns shown for ``res`` (interval columns only with an interval, the baseline's and
    the real effect only when there is one)."""
    cols = [Column("gene", "gene", "Gene symbol", "text"),
            Column("predicted_log2fc", "effect (log2 FC)",
                   "Predicted effect: mean log2(1 + normalised expression) of the condition minus "
                   "its control's, averaged over the ensemble's members. Positive = higher "
                   "after the perturbation.", "lfc")]
    if res.has_interval:
        cols += [Column("interval90_low_log2fc", "90% interval",
                        f"The effect lies in this range with 90% probability, from the spread "
                        f"of the model's {res.members} members (calibrated on held-out cells). "
                        "An interval that excludes 0 means the direction of the change is "
                        "trusted. Sorts by the lower end.", "interval", "interval90_high_log2fc"),
                 Column("members_agree_on_sign", "members agree",
                        f"yes: all {res.members} ensemble members predict a change in the same "
                        "direction; no: at least one disagrees", "yesno"),
                 Column("confidence_abs_effect_over_interval_width", "confidence",
                        "|effect| / width of the 90% interval. Above 0.5 the interval excludes "
                        "0; larger is surer. The y axis of the plot.", "num")]
    if res.baseline is not None:
        name = BASELINE_NAMES.get(res.baseline.name, res.baseline.name.replace("_", " "))
        cols.append(Column(baseline_column(res.baseline.name), f"{name} baseline",
                           f"The {name} baseline's effect (log2 FC): "
                           f"{res.baseline.detail or 'a simple prediction from the training data'}"
                           ". A prediction worth trusting beats this.", "lfc"))
    if real is not None:
        src = f" in {data_name}" if data_name else " in the open dataset"
        cols.append(Column("real_log2fc", "real (log2 FC)",
                           f"The effect measured in real cells{src}: {real.n_cells:,} cells of "
                           f"this condition vs {real.n_control:,} of its control (log2 FC; "
                           "— where the gene is missing from the data)", "lfc"))
    return tuple(cols)


# -- the plot -----------------------------------------------------------------------------------
def effect_plot(res, real=None, *, title: str = "") -> PlotSpec:
    """Effect vs confidence with an interval; with a single member, the predicted effect against
    the baseline's (or the real effect); a plain message when there is nothing to compare."""
    genes = [str(g) for g in res.genes]
    lfc = np.asarray(res.effect, float) / LN2
    if res.has_interval:
        conf = np.nan_to_num(np.asarray(res.confidence, float), nan=0.0, posinf=CONFIDENCE_CAP)
        capped = conf > CONFIDENCE_CAP
        y = np.minimum(conf, CONFIDENCE_CAP)
        agree = np.asarray(res.members_agree, bool)
        sure = agree & (conf >= CONFIDENT)
        classes = np.where(sure & (lfc > 0), "up", np.where(sure & (lfc < 0), "down", "ns"))
        return PlotSpec(
            genes=genes, x=lfc, y=y, classes=classes, capped=capped,
            xlabel="predicted effect (log2 fold change)",
            ylabel="confidence: |effect| / 90% interval width",
            title=title, hlines=(CONFIDENT,), vlines=(0.0,), score=np.abs(lfc) * y,
            legend=f"Red / blue: all {res.members} members agree and the 90% interval excludes "
                   f"0 (above the dashed line). Grey: not sure. ▲ confidence above "
                   f"{CONFIDENCE_CAP:g}.")
    if res.baseline is not None or real is not None:
        if res.baseline is not None:
            x = np.asarray(res.baseline.effect, float) / LN2
            name = BASELINE_NAMES.get(res.baseline.name, res.baseline.name)
            xlabel = f"{name} baseline's effect (log2 fold change)"
            what = f"the {name} baseline"
        else:
            x = np.asarray(real.effect, float) / LN2
            xlabel = "real effect in the open dataset (log2 fold change)"
            what = "the real cells"
        ok = np.isfinite(x)
        x = np.where(ok, x, 0.0)
        classes = np.where(~ok, "ns", np.where(lfc > 0, "up", "down"))
        return PlotSpec(
            genes=genes, x=x, y=lfc, classes=classes, capped=np.zeros(len(genes), bool),
            xlabel=xlabel, ylabel="predicted effect (log2 fold change)", title=title,
            hlines=(0.0,), vlines=(0.0,), diagonal=True, score=np.abs(lfc - x) + np.abs(lfc),
            legend=f"Single-member model: no confidence axis. Each dot is a gene; on the "
                   f"diagonal the model agrees with {what}.")
    return PlotSpec(message=f"{SINGLE_MEMBER}\n\nThere is no baseline and no real cells of this "
                            "condition to compare with, so there is nothing to plot: the table "
                            "lists the predicted effects.", title=title)


# -- the sentences --------------------------------------------------------------------------------
def coverage_text(card, kind: str) -> str:
    """How often, on held-out cells, the model's 90 % intervals held the real effect for this
    kind of condition (``card["evidence"][kind]["coverage"]``); "" when the card does not say.
    The card is data from a model folder: any shape is tolerated."""
    ev = card.get("evidence") if isinstance(card, dict) else None
    entry = ev.get(kind) if isinstance(ev, dict) else None
    cov = entry.get("coverage") if isinstance(entry, dict) else None
    if not isinstance(cov, dict):
        return ""
    aware, raw = cov.get("coverage_noise_aware"), cov.get("coverage")
    if not _num(aware) and not _num(raw):
        return ""
    main = float(aware) if _num(aware) else float(raw)
    text = (f"On held-out cells of such conditions the 90% interval held the real effect for "
            f"{main:.0%} of the top-100 changed genes")
    if _num(aware) and _num(raw):
        text += f" (allowing for the noise of the held-out cells; {float(raw):.0%} without)"
    return text + "."


def effect_notes(res, real=None, *, data_name: str = "", real_reason: str = "",
                 has_stats: bool = True, card=None) -> tuple:
    """Plain sentences under the evidence line (``has_stats``: the model carries its training
    group means, from which the baselines come; ``card``: the model's card, for the interval's
    coverage on held-out cells)."""
    out = []
    if res.has_interval:
        lfc = np.asarray(res.effect, float) / LN2
        conf = np.nan_to_num(np.asarray(res.confidence, float), nan=0.0)
        sure = np.asarray(res.members_agree, bool) & (conf >= CONFIDENT)
        out.append(f"{res.members} ensemble members; {int((sure & (np.abs(lfc) >= 0.5)).sum()):,}"
                   f" genes change by at least 0.5 log2 FC with an interval that excludes 0 and "
                   f"every member agreeing. The interval does not shrink with more cells: it is "
                   f"the model's own uncertainty.")
        cov = coverage_text(card, res.evidence.kind) if res.evidence is not None else ""
        if cov:
            out.append(cov)
    else:
        out.append(SINGLE_MEMBER)
    if res.baseline is None and not has_stats:
        out.append("No baseline: this model carries no statistics of its training cells (it was "
                   "built before baselines were stored with models).")
    elif res.baseline is None:
        out.append("No baseline for this condition: its perturbation was not measured in "
                   "another cell type or context, and it is not a combination of measured "
                   "parts.")
    if real is not None:
        out.append(f"Real effect from {data_name or 'the open dataset'}: {real.n_cells:,} cells "
                   f"vs {real.n_control:,} control cells.")
    elif real_reason:
        out.append(real_reason)
    return tuple(out)


def effect_view(model, exp, label: str, *, dataset=None, schema=None, cached=None,
                data_name: str = "") -> EffectView:
    """Everything the DE tab shows for ``label`` of ``exp`` (app.experiment.Experiment made by
    ``model``), on a worker thread. ``dataset``/``schema``: the open dataset and its roles (for
    the real effect); ``cached``: ``(EffectResult, RealEffect or None, why)`` computed before
    (:func:`compute_effects`)."""
    cond = (exp.conditions or {}).get(label)
    if exp.mode == "denovo" and not exp.only_controls and cond is not None:
        if cached is None:
            from engine.errors import PerturbStudioError

            try:
                cached = compute_effects(model, exp, label, dataset, schema)
            except PerturbStudioError as e:
                log.exception("no effects for %s", label)
                return change_view(model, exp, label, why=f"No effect with an interval: {e}.")
        res, real, why = cached
        ctrl = res.control.label
        return EffectView(label, effect_frame(res, real),
                          effect_columns(res, real, data_name=data_name),
                          effect_plot(res, real, title=label),
                          f"{label} vs its generated control ({ctrl}), {res.n_cells:,} generated "
                          "cells. Sorted by |effect|.",
                          res.evidence, res.members,
                          effect_notes(res, real, data_name=data_name, real_reason=why,
                                       has_stats=_has_stats(model),
                                       card=getattr(model, "card", None)),
                          res, real)
    return change_view(model, exp, label)


def _has_stats(model) -> bool:
    try:
        return model.group_stats() is not None
    except Exception:  # noqa: BLE001 - a model without the method or a broken reference file
        return False


def compute_effects(model, exp, label: str, dataset=None, schema=None):
    """``(EffectResult, RealEffect or None, why there is no real effect)`` of a generated
    condition (on a worker thread)."""
    from engine.effects import effects_from_cells

    cond = exp.conditions[label]
    res = effects_from_cells(model, exp.adata, cond)
    real, why = real_effect_of(model, cond, dataset, schema)
    return res, real, why


def real_effect_of(model, cond, dataset, schema) -> tuple[Any, str]:
    """The real effect of ``cond`` in the open dataset (None when it holds too few cells of the
    condition or of its control) and, when None, why in one sentence ("" with no dataset)."""
    if dataset is None or schema is None:
        return None, ""
    from engine.effects import real_effect
    from engine.errors import PerturbStudioError

    try:
        real = real_effect(model, dataset, schema, cond)
    except PerturbStudioError as e:
        log.info("no real effect for %s: %s", cond.label, e)
        return None, f"No real effect: {e}."
    if real is None:
        return None, ("The open dataset holds no real cells of this condition (or of its "
                      "control): no real effect to show.")
    return real, ""


def change_view(model, exp, label: str, *, why: str = "") -> EffectView:
    """The change of the mean per gene where there is no generated control (perturbing your own
    cells; unperturbed populations compared with each other): no interval, said why."""
    import pandas as pd

    import engine

    de = engine.differential_expression(exp.group(label), exp.control(label))
    perturb = exp.mode == "perturb"
    if perturb:
        this, other, vs = "perturbed", "your_cells", "your original cells"
    elif exp.only_controls:
        this, other, vs = "population", "other_populations", "all other generated cells"
    else:
        this, other, vs = "condition", "control", "its generated control"
    frame = pd.DataFrame({"gene": de["gene"].astype(str).to_numpy(),
                          "change_log2fc": de["log2fc"].to_numpy(float),
                          f"mean_log1p_{this}": de["mean_a"].to_numpy(float),
                          f"mean_log1p_{other}": de["mean_b"].to_numpy(float)})
    heads = {"perturbed": "mean (perturbed)", "your_cells": "mean (your cells)",
             "population": "mean (population)", "other_populations": "mean (others)",
             "condition": "mean (condition)", "control": "mean (control)"}
    cols = (Column("gene", "gene", "Gene symbol", "text"),
            Column("change_log2fc", "change (log2 FC)",
                   f"Mean log2(1 + normalised expression) of {label} minus that of {vs}. "
                   "Positive = higher.", "lfc"),
            Column(f"mean_log1p_{this}", heads[this],
                   "Mean log(1 + normalised expression)", "num"),
            Column(f"mean_log1p_{other}", heads[other],
                   f"Mean log(1 + normalised expression) of {vs}", "num"))
    if why:
        pass
    elif perturb:
        why = ("Your own cells were perturbed: the table compares the model's output with the "
               "cells you gave it. There is no interval here; generate this condition with its "
               "control on the Compose page to see how far to trust it.")
    else:
        why = ("No perturbation was generated: each population is compared with the other "
               "generated cells (marker genes). These are descriptions, not tested effects.")
    ev = None
    cond = (exp.conditions or {}).get(label)
    if cond is not None and model is not None:
        ev = evidence_of(model, cond)
    plot = PlotSpec(message=why, title=label)
    return EffectView(label, frame, cols, plot, f"{label} vs {vs}: {len(frame):,} genes. Sorted by "
                      "|change|.", ev, 0, (why,))


def evidence_of(model, cond):
    """The model's :class:`engine.effects.Evidence` for ``cond`` (None when it cannot say)."""
    from engine.errors import PerturbStudioError

    try:
        fn = getattr(model, "evidence", None)
        if fn is not None:
            return fn(cond)
        from engine.effects import evidence_for

        return evidence_for(model, cond)
    except (PerturbStudioError, AttributeError, KeyError, TypeError, ValueError):
        log.exception("no evidence for %s", getattr(cond, "label", cond))
        return None


def score_text(ev) -> str:
    """The card's held-out score for an evidence class, and the baseline's: one short phrase."""
    if ev is None:
        return ""
    s = ev.score if isinstance(ev.score, dict) else None
    b = ev.baseline_score if isinstance(ev.baseline_score, dict) else None
    if s is None or not _num(s.get("r2_top100")):
        return "not scored on held-out cells"
    out = f"held-out R2 {float(s['r2_top100']):.2f}"
    if _num(s.get("r2_top100_nested")):       # a sampling rule chosen on the scored folds
        out = (f"held-out R2 {float(s['r2_top100_nested']):.2f} "
               f"({float(s['r2_top100']):.2f} on the folds its rule was chosen on)")
    if b is not None and _num(b.get("r2_top100")):
        name = BASELINE_NAMES.get(str(b.get("name", "")), str(b.get("name", "baseline")))
        same = b.get("model_r2_on_same")       # engine.effects.judge_entry: set when the
        if _num(same) and _num(b.get("n")):     # baseline covers only some of the conditions
            return (f"{out}; on the {int(float(b['n']))} conditions the {name} baseline "
                    f"covers, model {float(same):.2f} vs baseline {float(b['r2_top100']):.2f}")
        out += f" vs {name} baseline {float(b['r2_top100']):.2f}"
    return out


def _num(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# -- the heatmap's extra rows -------------------------------------------------------------------
def heatmap_extras(genes, results: dict, reals: dict) -> list:
    """``[(after_label, label, values over genes)]``: each condition's baseline effect and, when
    there are real cells of it, its real effect (natural-log units, like the heatmap)."""
    out = []
    for label, res in results.items():
        if res is None:
            continue
        idx = {g: i for i, g in enumerate(res.genes)}
        cols = np.array([idx.get(str(g), -1) for g in genes], dtype=np.int64)
        ok = cols >= 0

        def pick(vec, _cols=cols, _ok=ok):
            v = np.full(len(_cols), np.nan, np.float32)
            v[_ok] = np.asarray(vec, float)[_cols[_ok]]
            return v

        if res.baseline is not None:
            name = BASELINE_NAMES.get(res.baseline.name, res.baseline.name)
            out.append((label, f"{label} · baseline ({name})", pick(res.baseline.effect)))
        real = reals.get(label)
        if real is not None:
            out.append((label, f"{label} · real cells", pick(real.effect)))
    return out
