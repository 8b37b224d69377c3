"""Turn :class:`Condition` objects into index tensors for the condition embedders.

Index 0 is reserved everywhere: "absent / dropped" for hierarchy levels, padding for
perturbation slots. The vocabulary is saved in the model's ``config.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConditionError
from .spec import Condition, ConditionSpace, repeated_targets

CELL_TYPE_LEVEL = "cell_type"


@dataclass
class CondArrays:
    """Encoded conditions for B cells (numpy; converted to tensors by the model)."""

    levels: np.ndarray    # (B, L) int64, 0 = absent
    targets: np.ndarray   # (B, P) int64, 0 = padding
    types: np.ndarray     # (B, P) int64, 0 = none
    doses: np.ndarray     # (B, P) float32, log1p(dose) / dose_scale
    null: np.ndarray      # (B,) bool, perturbation slot dropped (classifier-free guidance)

    def take(self, idx: np.ndarray) -> CondArrays:
        return CondArrays(self.levels[idx], self.targets[idx], self.types[idx], self.doses[idx],
                          self.null[idx])

    def __len__(self) -> int:
        return len(self.null)


@dataclass
class Vocab:
    levels: list[str] = field(default_factory=list)          # coarse -> fine, cell_type last
    level_values: dict[str, list[str]] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    max_perturbations: int = 1
    dose_scale: float = 1.0

    @classmethod
    def from_conditions(cls, conds: Sequence[Condition], context_levels: Sequence[str]) -> Vocab:
        levels = list(context_levels)
        has_ct = any(c.cell_type is not None for c in conds)
        if has_ct:
            levels.append(CELL_TYPE_LEVEL)
        values: dict[str, set[str]] = {lv: set() for lv in levels}
        targets, types, doses = set(), set(), []
        max_p = 1
        for c in set(conds):
            for lv, v in c.context:
                values.setdefault(lv, set()).add(v)
            if has_ct and c.cell_type is not None:
                values[CELL_TYPE_LEVEL].add(c.cell_type)
            twice = repeated_targets(p.target for p in c.perturbations)
            if twice:     # the schema check refuses such labels; never learn "A+A" as 2 slots
                raise ConditionError(f"condition {c.label!r} names {', '.join(twice)} twice; "
                                     "a combination names each target once")
            max_p = max(max_p, len(c.perturbations))
            for p in c.perturbations:
                targets.add(p.target)
                if p.type:
                    types.add(p.type)
                if p.dose is not None:
                    doses.append(p.dose)
        scale = max(math.log1p(max(doses)), 1e-6) if doses else 1.0
        return cls(levels, {k: sorted(v) for k, v in values.items()}, sorted(targets),
                   sorted(types), max_p, scale)

    def encode(self, conds: Sequence[Condition],
               new_targets: Mapping[str, int] | None = None) -> CondArrays:
        """Encode a list of conditions (unique ones are encoded once, then gathered).

        ``new_targets``: indices (above ``len(targets)``) of targets never perturbed in
        training, for a model with target priors (:class:`engine.model.PerturbModel`)."""
        uniq: dict[Condition, int] = {}
        inverse = np.fromiter((uniq.setdefault(c, len(uniq)) for c in conds), dtype=np.int64,
                              count=len(conds))
        u = list(uniq)
        L, P = len(self.levels), self.max_perturbations
        levels = np.zeros((len(u), L), np.int64)
        targets = np.zeros((len(u), P), np.int64)
        types = np.zeros((len(u), P), np.int64)
        doses = np.zeros((len(u), P), np.float32)
        lv_index = {lv: {v: i + 1 for i, v in enumerate(vals)}
                    for lv, vals in self.level_values.items()}
        t_index = {**(new_targets or {}), **{t: i + 1 for i, t in enumerate(self.targets)}}
        ty_index = {t: i + 1 for i, t in enumerate(self.types)}
        for row, c in enumerate(u):
            ctx = c.context_dict()
            if c.cell_type is not None:
                ctx[CELL_TYPE_LEVEL] = c.cell_type
            for j, lv in enumerate(self.levels):
                levels[row, j] = lv_index[lv].get(ctx.get(lv, ""), 0)
            for k, p in enumerate(c.perturbations[:P]):
                targets[row, k] = t_index[p.target]
                types[row, k] = ty_index.get(p.type or "", 0)
                doses[row, k] = math.log1p(p.dose if p.dose is not None else 1.0) / self.dose_scale
        null = np.zeros(len(u), bool)
        return CondArrays(levels, targets, types, doses, null).take(inverse)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(**d)


def build_space(conds: Sequence[Condition], vocab: Vocab, *, control_label: str,
                has_dose: bool) -> ConditionSpace:
    """The user-facing vocabulary (what the GUI offers and ``validate`` accepts)."""
    target_types: dict[str, set[str]] = {}
    dose_vals = []
    uniq = set(conds)
    for c in uniq:
        for p in c.perturbations:
            target_types.setdefault(p.target, set())
            if p.type:
                target_types[p.target].add(p.type)
            if p.dose is not None:
                dose_vals.append(p.dose)
    ctx_levels = [lv for lv in vocab.levels if lv != CELL_TYPE_LEVEL]
    seen = sorted((c.to_dict() for c in uniq), key=lambda d: repr(d))
    return ConditionSpace(
        cell_types=list(vocab.level_values.get(CELL_TYPE_LEVEL, [])),
        targets=list(vocab.targets), perturbation_types=list(vocab.types),
        target_types={k: sorted(v) for k, v in sorted(target_types.items())},
        context_levels=ctx_levels,
        context_values={lv: list(vocab.level_values[lv]) for lv in ctx_levels},
        has_dose=has_dose,
        dose_range=(min(dose_vals), max(dose_vals)) if (has_dose and dose_vals) else None,
        max_perturbations=vocab.max_perturbations, control_label=control_label, seen=seen)
