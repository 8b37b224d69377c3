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
              context: Mapping[str, str] | str | None = None, *,
              control_label: str | None = None) -> Condition:
        """Parse CLI-style strings: ``perturbation="A+B"`` (or ``control``), ``dose="1+0.5"``,
        ``context="organism=human,tissue=blood"``. One type or dose applies to all targets unless
        given per target with ``+``. ``control_label`` (the model's) also means "no
        perturbation", like the words in :data:`CONTROL_WORDS`.

        Raises :class:`ConditionError` for an empty value, an empty part (``A+``, ``+A``, ``+``),
        a dose that is not a finite number >= 0, or a malformed context (see
        :func:`split_combination` and :func:`parse_context`). A target named twice (``A+A``) is
        refused by :meth:`ConditionSpace.validate`, which knows the model's limits."""
        if cell_type is not None and not str(cell_type).strip():
            raise ConditionError("the cell type is empty; give one of the model's cell types "
                                 "or leave it out")
        controls = () if control_label is None else (control_label,)
        targets = [] if perturbation is None else \
            list(split_combination(perturbation, control_labels=controls))
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


def group_key(c: Condition) -> tuple:
    """What makes two conditions the same group of cells: cell type, the perturbations'
    (target, type) pairs (order-free: A+B is B+A) and the context. Doses are not part of it."""
    return (c.cell_type, tuple(sorted((p.target, p.type or "") for p in c.perturbations)),
            c.context)


def is_control_word(value: str, control_labels: Iterable[str] = ()) -> bool:
    """True when ``value`` (a whole perturbation value or one part of ``A+B``) means "no
    perturbation": one of :data:`CONTROL_WORDS` or of ``control_labels``, ignoring case and
    surrounding whitespace."""
    v = str(value).strip().lower()
    return v in CONTROL_WORDS or any(v == str(c).strip().lower() for c in control_labels)


def split_parts(text: str, *, what: str = "perturbation") -> tuple[str, ...]:
    """Split ``A+B`` (also ``A + B``) into its parts, stripped of surrounding whitespace.

    The one splitter of ``+`` values: perturbations, and per-part types and doses, in the CLI,
    the GUI, the engine API and training data (:mod:`engine.data.schema`).

    Raises
    ------
    ConditionError
        The value is empty or blank, or has an empty part (``A+``, ``+A``, ``A++B``, ``+``).
    """
    s = str(text)
    if not s.strip():
        raise ConditionError(f"the {what} is empty; write a value (for no perturbation: "
                             "control)" if what == "perturbation" else f"the {what} is empty")
    parts = tuple(p.strip() for p in s.split("+"))
    if any(p == "" for p in parts):
        raise ConditionError(f"{what} {s!r} has an empty part; combinations are written like "
                             "A+B, with a name on each side of every +")
    return parts


def split_combination(text: str, *, control_labels: Iterable[str] = ()) -> tuple[str, ...]:
    """The targets of a perturbation value: ``"A+B"`` -> ``("A", "B")``, ``"control"`` -> ``()``.

    Parts that are control words (or one of ``control_labels``) mean "no perturbation", also
    inside a combination: ``MEIS1+ctrl`` is ``MEIS1`` alone (the convention of Norman et al.
    2019). Targets keep their order and case; see :func:`repeated_targets` for ``A+A``.

    Raises
    ------
    ConditionError
        As :func:`split_parts`: an empty value or an empty part, with the reason.
    """
    if str(text).strip() and is_control_word(text, control_labels):
        return ()
    return tuple(p for p in split_parts(text) if not is_control_word(p, control_labels))


def repeated_targets(targets: Iterable[str]) -> list[str]:
    """Targets named more than once, ignoring case (``A+A``, ``CBL+cbl``), in first order."""
    seen: dict[str, str] = {}
    out: list[str] = []
    for t in targets:
        key = str(t).strip().casefold()
        if key in seen and seen[key] not in out:
            out.append(seen[key])
        seen.setdefault(key, str(t))
    return out


def parse_context(text: str) -> dict[str, str]:
    """``"organism=human,tissue=blood"`` -> ``{"organism": "human", "tissue": "blood"}``.

    Raises :class:`ConditionError` for an item without ``=``, an empty level or value, or a level
    given twice. Empty items (a trailing comma) are ignored."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        if "=" not in item:
            raise ConditionError(f"context item {item!r} must look like level=value")
        k, v = (x.strip() for x in item.split("=", 1))
        if not k or not v:
            raise ConditionError(f"context item {item!r} has an empty "
                                 f"{'level' if not k else 'value'}; write level=value")
        if k in out:
            raise ConditionError(f"context level {k!r} is given twice ({out[k]!r} and {v!r})")
        out[k] = v
    return out


def _split(value: str | None, n: int, what: str) -> list[str | None]:
    if value is None or n == 0:
        return [None] * n
    parts = list(split_parts(value, what=what))
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
        for p in cond.perturbations:
            if not isinstance(p.target, str) or not p.target.strip() or "+" in p.target \
                    or p.target != p.target.strip():
                raise ConditionError(f"perturbation target {p.target!r} is not one target name; "
                                     "give each target of a combination on its own")
        twice = repeated_targets(p.target for p in cond.perturbations)
        again = f" ({', '.join(twice)} named twice)" if twice else ""
        if len(cond.perturbations) > max(self.max_perturbations, 0) and self.targets:
            raise ConditionError(f"{len(cond.perturbations)} perturbations at once{again}; this "
                                 f"model was trained with at most {self.max_perturbations}")
        if twice:
            raise ConditionError(f"{', '.join(twice)} is named twice in "
                                 f"{'+'.join(p.target for p in cond.perturbations)!r}; a "
                                 "combination names each target once")
        if cond.perturbations and not self.targets:
            raise ConditionError("this model was trained without perturbations; it can only "
                                 "generate unperturbed cells")
        for p in cond.perturbations:
            target = p.target
            if target not in self.targets:
                look = getattr(self, "gene_lookup", None)
                if look is None:
                    raise ConditionError(f"{p.target} was never perturbed in this model's "
                                         f"training data; perturbable targets are: "
                                         f"{_ls(self.targets)}")
                target = look(p.target)       # a trained target or a gene of the priors
            new = target not in self.targets
            if self.perturbation_types:
                if new and p.type is None and len(self.perturbation_types) != 1:
                    raise ConditionError(f"give a perturbation type for {p.target} (never "
                                         f"perturbed in training); this model's types are: "
                                         f"{_ls(self.perturbation_types)}")
                if not new and p.type is None and len(self.target_types.get(target, [])) != 1:
                    raise ConditionError(f"give a perturbation type for {p.target}; seen as: "
                                         f"{_ls(self.target_types.get(target, []))}")
                if p.type is not None and p.type not in self.perturbation_types:
                    raise ConditionError(f"perturbation type {p.type!r} is unknown; known types "
                                         f"are: {_ls(self.perturbation_types)}")
            if p.dose is not None:
                if not self.has_dose:
                    raise ConditionError("this model has no dose condition; leave dose empty")
                if not math.isfinite(p.dose) or p.dose < 0:
                    raise ConditionError(f"dose must be >= 0, got {p.dose}")

    def context_of(self, cell_type: str | None) -> dict[str, set[str]]:
        """The values each context level took for ``cell_type`` in training (level -> set)."""
        return self._context_of(cell_type)

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
            target = self.canonical_target(p.target)
            ty = p.type
            if ty is None and len(self.target_types.get(target, [])) == 1:
                ty = self.target_types[target][0]
            elif ty is None and target not in self.targets and len(self.perturbation_types) == 1:
                ty = self.perturbation_types[0]          # a gene never perturbed in training
            dose = p.dose if p.dose is not None or not self.has_dose else 1.0
            perts.append(Perturbation(target, ty, dose))
        ctx = cond.context_dict()
        implied = self._context_of(cond.cell_type)
        for level in self.context_levels:
            if level not in ctx:
                values = implied.get(level) or set(self.context_values.get(level, []))
                if len(values) == 1:
                    ctx[level] = next(iter(values))
        return Condition.make(cond.cell_type, perts, {lv: ctx[lv] for lv in self.context_levels
                                                      if lv in ctx})

    def canonical_target(self, name: str) -> str:
        """The target ``name`` means: itself when trained on; for a model with gene priors
        (``gene_lookup``, set by :class:`engine.model.PerturbModel`) the trained target or the
        priors' symbol it resolves to (an alias or Ensembl id, another case); else unchanged."""
        if name in self.targets:
            return name
        look = getattr(self, "gene_lookup", None)
        if look is None:
            return name
        try:
            return look(name)
        except ConditionError:
            return name

    def new_targets(self, cond: Condition) -> list[str]:
        """Targets of ``cond`` (completed) never perturbed in training."""
        return [p.target for p in cond.perturbations if p.target not in self.targets]

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
