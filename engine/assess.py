"""Train a model and judge it on cells it never saw: the card every model carries.

:func:`train_and_assess` is what ``perturb-studio train`` and the app's Train page run: a
stratified hold-out (20 % of the cells of every condition group with at least 10 cells), a
model trained on the rest, its held-out scores beside the simple baselines
(:mod:`engine.evaluate`), the coverage of its effect intervals and their calibration
(:mod:`engine.effects`), plain sentences and warnings, all written into the model's card. The
shipped models are built the same way by ``build_scripts/train_models.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError

#: Fewest cells per condition group for a model to have a fair chance to learn a condition.
FEW_CELLS = 20
#: Groups with fewer cells than this are not held out (engine.evaluate.split).
MIN_SPLIT = 10
#: Training from disk (a BackedDataset): the held-out cells judged, and the training cells
#: used as the baselines' reference, are stratified samples of at most this many cells each.
STREAM_ASSESS_CELLS = 20_000


def ensemble_coverage(model, test, schema, *, train=None, n: int = 2000, seed: int = 0
                      ) -> tuple[dict | None, list[dict]]:
    """Coverage of the ensemble's 90 % effect intervals on the held-out cells of every
    perturbed condition (at least 5 cells of it and of its control), cross-fitted over two
    halves of the conditions (:func:`engine.effects.cross_fitted_coverage`). With ``train``
    (the training cells), each condition's top-100 DEGs are chosen by its effect in the
    training cells, not by the held-out effect that is scored."""
    from .effects import (
        coverage_record,
        cross_fitted_coverage,
        predict_effects_many,
        real_effect,
    )
    from .errors import ConditionError

    if model.members < 2 or not model.space.targets:
        return None, []
    _, uniq = schema.condition_codes(schema.filter(test))
    conds, reals = [], []
    for c in uniq:
        if c.is_control:
            continue
        try:
            c = model.check_condition(c)
        except ConditionError:
            continue
        r = real_effect(model, test, schema, c, min_cells=5)
        if r is not None:
            conds.append(c)
            reals.append(r)
    if not conds:
        return None, []
    selects = []
    for c in conds:
        t = None if train is None else real_effect(model, train, schema, c, min_cells=5)
        selects.append(None if t is None else t.effect)
    preds = predict_effects_many(model, conds, n=n, seed=seed)
    records = [coverage_record(p, r, select=sel)
               for p, r, sel in zip(preds, reals, selects, strict=True)]
    records = [r for r in records if r is not None]
    return (cross_fitted_coverage(records) if records else None), records


def data_warnings(adata, schema) -> list[str]:
    """Plain warnings about data too thin to learn from (checked before training)."""
    codes, uniq = schema.condition_codes(schema.filter(adata))
    sizes = np.bincount(codes, minlength=len(uniq))
    out = []
    n, k = int(sizes.sum()), len(uniq)
    if k and n / k < FEW_CELLS:
        out.append(f"Only {n:,} cells for {k:,} conditions (about {n / k:.1f} per condition): "
                   f"too few to learn what each condition does; a model trained on them mostly "
                   f"repeats the average cell, and its held-out scores are not meaningful.")
    thin = [c.label for c, s in zip(uniq, sizes, strict=True) if s < MIN_SPLIT]
    if thin:
        out.append(f"{len(thin)} of {k} conditions have fewer than {MIN_SPLIT} cells and could "
                   f"not be held out and scored (e.g. {', '.join(thin[:3])}).")
    return out


def assess(model, train, test, schema, *, seed: int = 0) -> dict:
    """The card entries of a trained model judged on held-out cells: ``metrics`` (group
    summaries), ``verdicts``, ``per_condition``, ``evidence`` (per kind of condition) and the
    calibration factors it stores in ``config["ensemble"]["calibration"]``."""
    from .cards import evidence_entry, summarise, verdicts
    from .evaluate import evaluate_many

    _, uniq = schema.condition_codes(schema.filter(test))
    conds = [c for c in uniq if not c.is_control] or list(uniq)
    skipped: list = []
    results = [r.to_dict() for r in evaluate_many(model, test, schema, conds, mode="denovo",
                                                  seed=seed, reference=train, skipped=skipped)]
    summary = summarise(results, group="all conditions") if results else []
    cov, _ = ensemble_coverage(model, test, schema, train=train, seed=seed)
    kind = "measured" if model.space.targets else "population"
    entry = evidence_entry(summary, coverage=cov, source="automatic hold-out: 20% of the cells "
                           "of every condition with at least 10 cells")
    calibration = {"measured": cov["scale"], "default": cov["scale"]} \
        if cov and cov.get("scale") else {}
    return {"metrics": summary, "verdicts": verdicts(summary), "per_condition": results,
            "skipped": [f"{c.label}: {why}" for c, why in skipped],
            "evidence": {kind: entry} if entry else {}, "calibration": calibration}


def train_and_assess(adata, schema, out_dir: str | os.PathLike | None = None, *,
                     holdout: float = 0.2, seed: int = 0, overwrite: bool = False,
                     exclude: Sequence[Mapping[str, str]] = (), progress=None, cancel=None,
                     **train_kw):
    """Train on a stratified ``1 - holdout`` of the cells, judge the model on the rest, and
    write the folder with its card (see module doc). ``holdout=0`` trains on every cell and
    says in the card that the model was not evaluated."""
    from .cards import plain_sentences, render_markdown
    from .checkpoint import check_destination
    from .data.stream import BackedDataset
    from .distributed import SINGLE
    from .evaluate import split
    from .progress import Reporter
    from .train import apply_excludes, train_model

    dist = train_kw.get("dist") or SINGLE
    if out_dir is not None and dist.main:
        check_destination(out_dir, overwrite=overwrite)
    if not 0.0 <= holdout < 0.9:
        raise DataError(f"the held-out fraction must be between 0 and 0.9, got {holdout}")
    adata = apply_excludes(adata, exclude)
    warnings = data_warnings(adata, schema)
    if holdout > 0:
        train, test = split(schema.filter(adata), schema, frac=holdout, seed=seed)
        if test.n_obs == 0:
            warnings.append("No condition had 10 cells or more, so nothing was held out: the "
                            "model was trained on every cell and is not evaluated.")
            train, test = adata, None
    else:
        train, test = adata, None
    def scaled(p):                 # training fills 90% of the bar, judging the rest
        progress(dataclasses.replace(p, fraction=0.9 * p.fraction))

    if out_dir is not None and not train_kw.get("name"):
        train_kw["name"] = Path(out_dir).name
    model = train_model(train, schema, None, seed=seed, progress=scaled if progress else None,
                        cancel=cancel, exclude=(), **train_kw)
    model.config["training"]["exclude"] = [dict(r) for r in exclude]
    model.config["training"]["holdout"] = holdout
    card = dict(model.card)
    card["members"] = model.members
    if not dist.main:                # rank > 0 of a data-parallel run: rank 0 judges and writes
        return model
    judged_note = ""
    if test is not None and isinstance(test, BackedDataset):
        n_train, n_test = train.n_obs, test.n_obs
        train, test = (_sample_to_memory(d, schema, seed) for d in (train, test))
        judged_note = (f"; from disk, judged on a stratified sample of {test.n_obs} held-out "
                       f"cells with {train.n_obs} training cells as reference")
    else:
        n_train = train.n_obs
        n_test = test.n_obs if test is not None else 0
    if test is not None:
        Reporter(progress, 1, "judging the model on held-out cells", start=0.9, span=0.1)(0)
        judged = assess(model, train, test, schema, seed=seed)
        cal = judged.pop("calibration")
        if model.members > 1 and cal:
            model.config["ensemble"]["calibration"] = cal
            model.config["ensemble"]["calibration_note"] = (
                "measured on the automatic hold-out (factor on the member spread giving 90% "
                "noise-aware coverage on the top-100 DEGs); other kinds of condition use it "
                "too, which is likely too narrow for them")
        card.update(judged)
        card["split"] = (f"stratified hold-out: {holdout:.0%} of the cells of every condition "
                         f"group with at least {MIN_SPLIT} cells (seed {seed}); trained on "
                         f"{n_train} cells, evaluated on {n_test} held-out cells{judged_note}")
    else:
        card["split"] = "none: trained on every cell; not evaluated on held-out cells"
    card["warnings"] = warnings
    card["conditions"] = model.config["space"]
    card["plain"] = warnings[:1] + plain_sentences(card)
    model.card = card
    if out_dir is not None:
        model.save(out_dir, card=card, card_md=render_markdown(model.config, card),
                   overwrite=overwrite)
        if train_kw.get("checkpoint_dir"):        # the run finished: its checkpoint is spent
            import shutil

            shutil.rmtree(train_kw["checkpoint_dir"], ignore_errors=True)
    return model


def _sample_to_memory(ds, schema, seed: int):
    """A stratified sample (by condition) of at most :data:`STREAM_ASSESS_CELLS` cells of a
    BackedDataset, read into memory."""
    from .reference import _quota

    codes, _ = schema.condition_codes(ds)
    n = np.bincount(codes)
    quota = _quota(n, STREAM_ASSESS_CELLS)
    rng = np.random.default_rng(seed)
    pos = [rng.choice(np.flatnonzero(codes == i), quota[i], replace=False)
           for i in range(len(n)) if quota[i]]
    return ds.to_memory(np.sort(np.concatenate(pos)))


__all__ = ["assess", "data_warnings", "ensemble_coverage", "train_and_assess"]
