"""What a condition is (plain data) and what a model can condition on (its vocabulary).

A :class:`Condition` is what a user asks for: a cell type, zero or more perturbations (each a
target with a type and an optional dose) and context levels (organism > tissue > ...). No
perturbations means the control condition. Perturbations are kept sorted, so ``A+B`` and ``B+A``
are the same condition.

A :class:`ConditionSpace` is the vocabulary a trained model knows. ``space.validate(cond)`` refuses
anything outside it and says why, listing what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from ..errors import ConditionError

CONTROL_WORDS = frozenset({"control", "ctrl", "non-targeting", "nt", "none", ""})


@dataclass(frozen=True, order=True)
class Perturbation:
    """One perturbation: a gene (knockout / CRISPRa / CRISPRi) or a drug with a dose."""

    target: str
    type: str | None = None
    dose: float | None = None

    def label(self) -> str:
        s = self.target
        if self.type:
            s += f" ({self.type})"
        if self.dose is not None:
            s += f" @ {self.dose:g}"
        return s


@dataclass(frozen=True)
class Condition:
    """A requested biological condition. Build it with :meth:`make` or :meth:`parse`."""

    cell_type: str | None = None
    perturbations: tuple[Perturbation, ...] = ()
    context: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(cls, cell_type: str | None = None,
             perturbations: Iterable[Perturbation] = (),
             context: Mapping[str, str] | None = None) -> Condition:
        perts = tuple(sorted(perturbations, key=lambda p: (p.target, p.type or "", p.dose or 0.0)))
        ctx = tuple((str(k), str(v)) for k, v in (context or {}).items())
        return cls(cell_type, perts, ctx)

    @classmethod
    def parse(cls, cell_type: str | None = None, perturbation: str | None = None,
              perturbation_type: str | None = None, dose: str | float | None = None,
              context: Mapping[str, str] | str | None = None) -> Condition:
        """Parse CLI-style strings: ``perturbation="A+B"`` (or ``control``), ``dose="1+0.5"``,
        ``context="organism=human,tissue=blood"``. One type or dose applies to all targets unless
        given per target with ``+``."""
        targets = [] if perturbation is None else [t.strip() for t in str(perturbation).split("+")]
        targets = [t for t in targets if t.lower() not in CONTROL_WORDS]
        types = _split(perturbation_type, len(targets), "perturbation type")
        doses_raw = _split(None if dose is None else str(dose), len(targets), "dose")
        doses: list[float | None] = []
        for d in doses_raw:
            if d is None:
                doses.append(None)
                continue
            try:
                x = float(d)
            except ValueError:
                raise ConditionError(f"dose {d!r} is not a number") from None
            if not math.isfinite(x) or x < 0:
                raise ConditionError(f"dose must be a finite number >= 0, got {d!r}")
            doses.append(x)
        perts = [Perturbation(t, ty, do) for t, ty, do in zip(targets, types, doses, strict=False)]
        if isinstance(context, str):
            context = parse_context(context)
        return cls.make(cell_type, perts, context)

    @property
    def is_control(self) -> bool:
        return not self.perturbations

    @property
    def perturbation_label(self) -> str:
        """``A+B`` style, ``control`` when empty (the format used in ``obs``)."""
        return "+".join(p.target for p in self.perturbations) or "control"

    @property
    def label(self) -> str:
        parts = [self.cell_type] if self.cell_type else []
        parts.append(" + ".join(p.label() for p in self.perturbations) or "control")
        return " | ".join(parts)

    def context_dict(self) -> dict[str, str]:
        return dict(self.context)

    def control(self) -> Condition:
        """The matching control: same cell type and context, no perturbation."""
        return Condition(self.cell_type, (), self.context)

    def to_dict(self) -> dict:
        return {"cell_type": self.cell_type,
                "perturbations": [asdict(p) for p in self.perturbations],
                "context": dict(self.context)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Condition:
        perts = [Perturbation(p["target"], p.get("type"), p.get("dose"))
                 for p in d.get("perturbations", [])]
        return cls.make(d.get("cell_type"), perts, d.get("context") or {})


def parse_context(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ConditionError(f"context item {item!r} must look like level=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _split(value: str | None, n: int, what: str) -> list[str | None]:
    if value is None or n == 0:
        return [None] * n
    parts = [p.strip() for p in str(value).split("+")]
    if len(parts) == 1:
        return parts * n
    if len(parts) != n:
        raise ConditionError(f"{len(parts)} values of {what} given for {n} perturbations")
    return parts


@dataclass
class ConditionSpace:
    """Everything a trained model can condition on, with the values seen in training."""

    cell_types: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    perturbation_types: list[str] = field(default_factory=list)
    target_types: dict[str, list[str]] = field(default_factory=dict)
    context_levels: list[str] = field(default_factory=list)
    context_values: dict[str, list[str]] = field(default_factory=dict)
    has_dose: bool = False
    dose_range: tuple[float, float] | None = None
    max_perturbations: int = 1
    control_label: str = "control"
    seen: list[dict] = field(default_factory=list)  # Condition.to_dict() of every trained condition
    simulated_dose: bool = False

    # -- validation ---------------------------------------------------------------------------
    def validate(self, cond: Condition) -> None:
        """Raise :class:`ConditionError` naming what is outside the vocabulary, and what is in it."""
        if self.cell_types:
            if cond.cell_type is None:
                raise ConditionError(f"choose a cell type; this model knows: {_ls(self.cell_types)}")
            if cond.cell_type not in self.cell_types:
                raise ConditionError(
                    f"cell type {cond.cell_type!r} is not in this model's training data; "
                    f"known cell types are: {_ls(self.cell_types)}")
        elif cond.cell_type is not None:
            raise ConditionError("this model has no cell-type condition; leave cell type empty")
        ctx = cond.context_dict()
        for level in ctx:
            if level not in self.context_levels:
                raise ConditionError(f"context level {level!r} is unknown; this model's levels are: "
                                     f"{_ls(self.context_levels) or 'none'}")
        for level, value in ctx.items():
            if value not in self.context_values.get(level, []):
                raise ConditionError(f"{level} {value!r} is not in this model's training data; "
                                     f"known values are: {_ls(self.context_values.get(level, []))}")
            within = self._context_of(cond.cell_type).get(level)
            if cond.cell_type is not None and within and value not in within:
                raise ConditionError(f"cell type {cond.cell_type!r} was only seen in {level} "
                                     f"{_ls(sorted(within))}, not in {value!r}")
        if len(cond.perturbations) > max(self.max_perturbations, 0) and self.targets:
            raise ConditionError(f"{len(cond.perturbations)} perturbations at once; this model was "
                                 f"trained with at most {self.max_perturbations}")
        if cond.perturbations and not self.targets:
            raise ConditionError("this model was trained without perturbations; it can only "
                                 "generate unperturbed cells")
        for p in cond.perturbations:
            if p.target not in self.targets:
                raise ConditionError(f"{p.target} was never perturbed in this model's training "
                                     f"data; perturbable targets are: {_ls(self.targets)}")
            if self.perturbation_types:
                if p.type is None and len(self.target_types.get(p.target, [])) != 1:
                    raise ConditionError(f"give a perturbation type for {p.target}; seen as: "
                                         f"{_ls(self.target_types.get(p.target, []))}")
                if p.type is not None and p.type not in self.perturbation_types:
                    raise ConditionError(f"perturbation type {p.type!r} is unknown; known types "
                                         f"are: {_ls(self.perturbation_types)}")
            if p.dose is not None:
                if not self.has_dose:
                    raise ConditionError("this model has no dose condition; leave dose empty")
                if not math.isfinite(p.dose) or p.dose < 0:
                    raise ConditionError(f"dose must be >= 0, got {p.dose}")

    def _context_of(self, cell_type: str | None) -> dict[str, set[str]]:
        """Context values each level took for this cell type in training."""
        out: dict[str, set[str]] = {}
        for d in self.seen:
            if d.get("cell_type") == cell_type:
                for k, v in (d.get("context") or {}).items():
                    out.setdefault(k, set()).add(v)
        return out

    def complete(self, cond: Condition) -> Condition:
        """Fill what the user may leave out: context levels implied by the cell type (or with a
        single value), the only type a target was seen with, dose 1."""
        perts = []
        for p in cond.perturbations:
            ty = p.type
            if ty is None and len(self.target_types.get(p.target, [])) == 1:
                ty = self.target_types[p.target][0]
            dose = p.dose if p.dose is not None or not self.has_dose else 1.0
            perts.append(Perturbation(p.target, ty, dose))
        ctx = cond.context_dict()
        implied = self._context_of(cond.cell_type)
        for level in self.context_levels:
            if level not in ctx:
                values = implied.get(level) or set(self.context_values.get(level, []))
                if len(values) == 1:
                    ctx[level] = next(iter(values))
        return Condition.make(cond.cell_type, perts, {lv: ctx[lv] for lv in self.context_levels
                                                      if lv in ctx})

    def is_seen(self, cond: Condition) -> bool:
        """True when exactly this condition was in the training data (not an extrapolation)."""
        d = self.complete(cond).to_dict()
        return any(_same(d, s) for s in self.seen)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dose_range"] = list(self.dose_range) if self.dose_range else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ConditionSpace:
        d = dict(d)
        if d.get("dose_range") is not None:
            d["dose_range"] = tuple(d["dose_range"])
        return cls(**d)


def _same(a: dict, b: dict) -> bool:
    def key(d):
        return (d.get("cell_type"),
                tuple((p["target"], p.get("type")) for p in d.get("perturbations", [])),
                tuple(sorted((d.get("context") or {}).items())))
    return key(a) == key(b)


def _ls(values: Iterable[str], limit: int = 40) -> str:
    values = list(values)
    s = ", ".join(values[:limit])
    return s + (f", ... ({len(values)} in all)" if len(values) > limit else "")
