"""Which ``obs`` column plays which role: cell type, perturbation, perturbation type, dose, context.

A :class:`Schema` maps roles to columns. :func:`guess_schema` proposes one from column names and
values, :func:`validate_schema` lists what is wrong with a schema for a dataset, and
:meth:`Schema.conditions` turns every cell into a :class:`engine.conditions.spec.Condition`.

Value rules (the same as :meth:`Condition.parse`):

- a perturbation value ``A+B`` is a combination of targets ``A`` and ``B``; the control label (and
  the words ``control``, ``ctrl``, ``non-targeting``, ``NT``, ``none``) mean "no perturbation", also
  inside a combination (``MEIS1+ctrl`` is ``MEIS1`` alone);
- a dose ``1+0.5`` gives one dose per part of the perturbation value; a single number applies to
  every target; doses must be finite numbers >= 0;
- a perturbation type applies to every target of the cell (``CRISPRa+CRISPRi`` with as many
  parts as the perturbation value gives one type per target);
- cells whose perturbation value is one of ``drop_labels`` (e.g. ``unassigned``) are left out of
  training: use :meth:`Schema.filter` first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..conditions.spec import (
    Condition,
    Perturbation,
    is_control_word,
    repeated_targets,
    split_parts,
)
from ..errors import ConditionError, SchemaError

if TYPE_CHECKING:
    from anndata import AnnData

#: Values recognised as the control label by :func:`guess_schema`, in order of preference.
CONTROL_CANDIDATES = ("control", "ctrl", "non-targeting", "nontargeting", "non_targeting", "NT",
                     "unperturbed", "negative_control", "vehicle", "DMSO", "none")
#: Values proposed as drop labels by :func:`guess_schema`.
DROP_CANDIDATES = ("unassigned", "multiplet", "multiplets", "doublet", "doublets", "unknown",
                   "ambiguous", "undetermined")

_CELL_TYPE_NAMES = ("cell_type", "celltype", "cell_types", "cell_type_label", "cell_line",
                    "cellline", "bulk_labels", "cell_label", "celltype_major", "annotation")
_PERT_NAMES = ("perturbation", "perturbations", "condition", "gene", "genes", "guide_target",
               "target_gene", "gene_target", "grna_target", "sgrna_target", "target",
               "perturbation_name", "treatment", "drug", "compound")
_TYPE_NAMES = ("perturbation_type", "pert_type", "perturbation_kind", "crispr_type")
_DOSE_NAMES = ("dose", "dose_val", "dose_value", "dosage", "concentration")
_CONTEXT_NAMES = ("organism", "species", "tissue", "organ")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass(frozen=True)
class SchemaIssue:
    """One problem with a schema: the role (``field``) at fault, a message, and a severity."""

    field: str
    message: str
    severity: str = "error"  # 'error' | 'warning'

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class Schema:
    """Which ``obs`` columns hold the condition of each cell.

    Attributes
    ----------
    cell_type_key
        Column of cell types (or cell lines), or None.
    perturbation_key
        Column of perturbation targets (``A``, ``A+B``, or the control label), or None (all
        cells are controls).
    perturbation_type_key
        Column of perturbation types (CRISPRa, CRISPRi, KO, drug, ...), or None.
    dose_key
        Column of doses (numbers, or ``1+0.5`` for combinations), or None.
    context_keys
        Context columns from the broadest to the narrowest level (organism, tissue, donor, ...).
    control_label
        The perturbation value of control cells.
    drop_labels
        Perturbation values of cells to leave out (e.g. ``unassigned``).
    """

    cell_type_key: str | None = None
    perturbation_key: str | None = None
    perturbation_type_key: str | None = None
    dose_key: str | None = None
    context_keys: tuple[str, ...] = ()
    control_label: str = "control"
    drop_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.context_keys = tuple(str(k) for k in (self.context_keys or ()))
        self.drop_labels = tuple(str(k) for k in (self.drop_labels or ()))
        self.control_label = "control" if self.control_label is None else str(self.control_label)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["context_keys"] = list(self.context_keys)
        d["drop_labels"] = list(self.drop_labels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Schema:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer files stay readable)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in dict(d).items() if k in names}
        return cls(**kwargs)

    # -- roles ------------------------------------------------------------------------------
    def roles(self) -> dict[str, str]:
        """Role name -> column, for the roles that are set (context levels as ``context[i]``)."""
        out = {}
        for role in ("cell_type_key", "perturbation_key", "perturbation_type_key", "dose_key"):
            if getattr(self, role) is not None:
                out[role] = getattr(self, role)
        for i, k in enumerate(self.context_keys):
            out[f"context_keys[{i}]"] = k
        return out

    def is_control_value(self, value: str) -> bool:
        """True when a perturbation value (or one part of ``A+B``) means no perturbation."""
        return is_control_word(value, (self.control_label,))

    # -- checks -----------------------------------------------------------------------------
    def check(self, adata: AnnData) -> None:
        """Raise :class:`SchemaError` listing every error of :func:`validate_schema`."""
        errors = [i for i in validate_schema(adata, self) if i.severity == "error"]
        if errors:
            lines = "\n".join(f"- {i.message}" for i in errors)
            raise SchemaError(f"the column roles do not fit this dataset:\n{lines}")

    def keep_mask(self, adata: AnnData) -> np.ndarray:
        """Boolean mask of the cells kept (those whose perturbation is not a drop label)."""
        if self.perturbation_key is None or not self.drop_labels \
                or self.perturbation_key not in adata.obs:
            return np.ones(adata.n_obs, dtype=bool)
        drop = {d.lower() for d in self.drop_labels}
        col = adata.obs[self.perturbation_key]
        values = pd.Series(pd.unique(col.astype(object)))
        dropped = {v for v in values if isinstance(v, str) and v.strip().lower() in drop}
        return ~col.astype(object).isin(dropped).to_numpy()

    def filter(self, adata: AnnData) -> AnnData:
        """The cells that are kept (a copy), or ``adata`` itself when nothing is dropped."""
        mask = self.keep_mask(adata)
        return adata if mask.all() else adata[mask].copy()

    # -- conditions -------------------------------------------------------------------------
    def condition_codes(self, adata: AnnData) -> tuple[np.ndarray, list[Condition]]:
        """Per-cell condition codes and the distinct conditions, fast.

        Each distinct combination of role values is parsed once, so this is quick on large
        datasets.

        Returns
        -------
        codes, conditions
            ``codes[i]`` indexes ``conditions`` for cell ``i`` (int64); ``conditions`` lists each
            distinct :class:`Condition` once, in order of first appearance (``A+B`` and ``B+A``
            are the same condition).

        Raises
        ------
        SchemaError
            The schema does not fit the dataset, or some cells carry a drop label (call
            :meth:`filter` first).
        """
        self.check(adata)
        if not self.keep_mask(adata).all():
            n = int((~self.keep_mask(adata)).sum())
            raise SchemaError(f"{n} cells have a perturbation marked to drop "
                              f"({', '.join(self.drop_labels)}); call schema.filter(adata) "
                              "before asking for their conditions")
        roles = self.roles()
        cols = list(roles.values())
        n = adata.n_obs
        if not cols:
            return np.zeros(n, dtype=np.int64), [Condition()]
        code_cols = []
        uniques = []
        for c in cols:
            codes, uniq = pd.factorize(adata.obs[c].astype(object), use_na_sentinel=True)
            code_cols.append(codes.astype(np.int64))
            uniques.append(list(uniq))
        stacked = np.stack(code_cols, axis=1)
        rows, inverse = np.unique(stacked, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        conds: list[Condition] = []
        index: dict[Condition, int] = {}
        row_to_cond = np.empty(len(rows), dtype=np.int64)
        role_names = list(roles)
        for r, row in enumerate(rows.tolist()):
            values = {role: (None if code < 0 else uniques[j][code])
                      for j, (role, code) in enumerate(zip(role_names, row, strict=True))}
            cond = self._parse_row(values)
            if cond not in index:
                index[cond] = len(conds)
                conds.append(cond)
            row_to_cond[r] = index[cond]
        codes = row_to_cond[inverse]
        # renumber in order of first appearance
        _, first = np.unique(codes, return_index=True)
        order = np.argsort(np.argsort(first))
        new_conds = [None] * len(conds)
        for old, new in enumerate(order):
            new_conds[new] = conds[old]
        return order[codes].astype(np.int64), new_conds

    def conditions(self, adata: AnnData) -> list[Condition]:
        """One :class:`Condition` per cell (see :meth:`condition_codes`)."""
        codes, conds = self.condition_codes(adata)
        return [conds[i] for i in codes]

    def _parse_row(self, v: dict) -> Condition:
        cell_type = None if v.get("cell_type_key") is None else str(v["cell_type_key"])
        context = {k: str(v[f"context_keys[{i}]"]) for i, k in enumerate(self.context_keys)}
        perts: list[Perturbation] = []
        pert = v.get("perturbation_key")
        if pert is not None and not self.is_control_value(pert):
            parts = split_parts(str(pert))
            types = _per_part(v.get("perturbation_type_key"), len(parts))
            doses = _per_part(v.get("dose_key"), len(parts))
            for part, ty, dose in zip(parts, types, doses, strict=True):
                if self.is_control_value(part):
                    continue
                perts.append(Perturbation(part, None if ty is None else str(ty),
                                          None if dose is None else float(dose)))
        return Condition.make(cell_type, perts, context)


def _per_part(value, n: int) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return [None] * n
    if isinstance(value, int | float | np.integer | np.floating):
        return [value] * n
    parts = list(split_parts(str(value)))
    return parts * n if len(parts) == 1 else parts


def _parts(value) -> tuple[str, ...] | None:
    """The ``+`` parts of a value (:func:`split_parts`), or None when it has an empty part."""
    try:
        return split_parts(str(value))
    except ConditionError:
        return None


# -- guessing ---------------------------------------------------------------------------------


def _find_column(obs: pd.DataFrame, names: tuple[str, ...], used: set[str]) -> list[str]:
    by_norm: dict[str, list[str]] = {}
    for c in obs.columns:
        by_norm.setdefault(_norm(c), []).append(str(c))
    out = []
    for n in names:
        for c in by_norm.get(_norm(n), []):
            if c not in used and c not in out:
                out.append(c)
    return out


def _is_labels(s: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)) \
        or s.nunique() <= 50


def _str_values(s: pd.Series) -> list[str]:
    return [str(v) for v in pd.unique(s.dropna().astype(object))]


def _control_in(values: list[str]) -> str | None:
    low = {v.strip().lower(): v for v in values}
    for cand in CONTROL_CANDIDATES:
        if cand.lower() in low:
            return low[cand.lower()]
    return None


def guess_schema(adata: AnnData) -> Schema:
    """Propose a schema from ``obs`` column names and values.

    Cell type: the first of ``cell_type``, ``celltype``, ``cell_line``, ``bulk_labels``, ...
    Perturbation: the first of ``perturbation``, ``condition``, ``gene``, ``guide_target``, ...
    that has a control-like value (``control``, ``ctrl``, ``non-targeting``, ``NT``,
    ``unperturbed``, ...), else the first with at least two values. Perturbation type:
    ``perturbation_type`` and similar. Dose: ``dose``, ``dose_val``, ... but only when the doses
    take more than one value (a column of all 1s carries no information). Context:
    ``organism``, ``species``, ``tissue``, ``organ``. Drop labels: values such as
    ``unassigned`` or ``doublet`` in the perturbation column.

    Parameters
    ----------
    adata
        The dataset.

    Returns
    -------
    Schema
        A proposal for the user to confirm; check it with :func:`validate_schema`.
    """
    obs = adata.obs
    used: set[str] = set()

    def pick(names, ok) -> str | None:
        for c in _find_column(obs, names, used):
            if ok(obs[c]):
                used.add(c)
                return c
        return None

    cell_type = pick(_CELL_TYPE_NAMES, lambda s: _is_labels(s) and s.notna().any())
    pert = None
    control = "control"
    candidates = [c for c in _find_column(obs, _PERT_NAMES, used) if _is_labels(obs[c])]
    for c in candidates:
        ctrl = _control_in(_str_values(obs[c]))
        if ctrl is not None:
            pert, control = c, ctrl
            break
    if pert is None:
        pert = next((c for c in candidates if obs[c].nunique() >= 2), None)
    if pert is not None:
        used.add(pert)
    ptype = pick(_TYPE_NAMES, lambda s: s.notna().any()) if pert else None
    dose = pick(_DOSE_NAMES, _informative_dose) if pert else None
    context = []
    for name in _CONTEXT_NAMES:
        c = pick((name,), lambda s: s.notna().any())
        if c:
            context.append(c)
    drops: tuple[str, ...] = ()
    if pert is not None:
        values = _str_values(obs[pert])
        low = {v.strip().lower(): v for v in values}
        drops = tuple(low[d] for d in DROP_CANDIDATES if d in low)
    return Schema(cell_type, pert, ptype, dose, tuple(context), control, drops)


def _informative_dose(s: pd.Series) -> bool:
    seen: set[float] = set()
    for v in _str_values(s):
        for part in _parts(v) or ("",):
            try:
                seen.add(float(part))
            except ValueError:
                return True  # let validation explain the bad value
    return len(seen) > 1


# -- validation -------------------------------------------------------------------------------

_ROLE_WORDS = {"cell_type_key": "cell type", "perturbation_key": "perturbation",
               "perturbation_type_key": "perturbation type", "dose_key": "dose"}


def _role_word(role: str) -> str:
    return _ROLE_WORDS.get(role, "context level")


def _ls(values, limit: int = 20) -> str:
    values = [str(v) for v in values]
    s = ", ".join(values[:limit])
    return s + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def validate_schema(adata: AnnData, schema: Schema) -> list[SchemaIssue]:
    """List what is wrong with ``schema`` for ``adata``.

    Checks: every named column exists (the message lists the available ones); no column plays
    two roles; role columns have no missing values (type and dose may be missing on control
    cells); the control label occurs in the perturbation column (the message lists its most
    common values); drop labels occur; perturbation values have no empty parts; doses are
    finite numbers >= 0, written ``1+0.5`` for combinations with one number per part (or one
    for all); perturbation types have one value per cell (or one per part).

    Parameters
    ----------
    adata
        The dataset.
    schema
        The proposed roles.

    Returns
    -------
    list of SchemaIssue
        Empty when the schema fits. ``severity`` is ``'error'`` (training would fail or be
        wrong) or ``'warning'`` (worth a look).
    """
    obs = adata.obs
    issues: list[SchemaIssue] = []
    roles = schema.roles()
    available = _ls(obs.columns, 60) or "(none)"
    missing = False
    for role, col in roles.items():
        if col not in obs.columns:
            missing = True
            field = role.split("[")[0]
            issues.append(SchemaIssue(field, f"{_role_word(role)} column {col!r} is not in "
                                             f"this dataset; available columns: {available}"))
    seen: dict[str, str] = {}
    for role, col in roles.items():
        if col in seen:
            issues.append(SchemaIssue(role.split("[")[0],
                                      f"column {col!r} is used both as {_role_word(seen[col])} "
                                      f"and as {_role_word(role)}"))
        seen.setdefault(col, role)
    if schema.perturbation_key is None:
        for role in ("perturbation_type_key", "dose_key"):
            if getattr(schema, role) is not None:
                issues.append(SchemaIssue(role, f"a {_role_word(role)} column needs a "
                                                "perturbation column"))
        if schema.cell_type_key is None and not schema.context_keys:
            issues.append(SchemaIssue("perturbation_key", "no condition columns are chosen; "
                                      "every cell will be treated alike", "warning"))
    if missing:
        return issues

    keep = schema.keep_mask(adata)
    if not keep.any():
        issues.append(SchemaIssue("drop_labels", "every cell carries a drop label; nothing is "
                                                 "left to train on"))
        return issues
    sub = obs.loc[keep] if not keep.all() else obs

    pert_col = schema.perturbation_key
    is_ctrl = np.zeros(len(sub), dtype=bool)
    if pert_col is not None:
        s = sub[pert_col]
        values = _str_values(obs[pert_col])
        vc = obs[pert_col].astype(object).value_counts()
        vc = vc[vc > 0]
        top = _ls([f"{v} ({n})" for v, n in vc.head(10).items()])
        label = schema.control_label.strip().lower()
        if label not in {v.strip().lower() for v in values}:
            hint = _control_in(values)
            extra = f"; did you mean {hint!r}?" if hint else ""
            issues.append(SchemaIssue("control_label",
                                      f"control label {schema.control_label!r} is not a value of "
                                      f"column {pert_col!r}; its most common values are: "
                                      f"{top}{extra}"))
        for d in schema.drop_labels:
            if d.strip().lower() not in {v.strip().lower() for v in values}:
                issues.append(SchemaIssue("drop_labels", f"drop label {d!r} is not a value of "
                                                         f"column {pert_col!r}", "warning"))
        ctrl_values = {v for v in values if schema.is_control_value(v)}
        is_ctrl = s.astype(object).isin(ctrl_values).to_numpy()
        issues.extend(_check_labels(s, schema, pert_col, ctrl_values))
        if is_ctrl.all() and len(sub):
            issues.append(SchemaIssue("perturbation_key", f"every cell in column {pert_col!r} "
                                      "is a control; there is no perturbation to learn",
                                      "warning"))

    for role, col in roles.items():
        s = sub[col]
        na = s.isna().to_numpy()
        if role in ("perturbation_type_key", "dose_key"):
            na &= ~is_ctrl
        if na.any():
            first = sub.index[np.flatnonzero(na)[0]]
            what = "perturbed cells have" if role in ("perturbation_type_key", "dose_key") \
                else "cells have"
            issues.append(SchemaIssue(role.split("[")[0],
                                      f"{int(na.sum())} {what} no value in {_role_word(role)} "
                                      f"column {col!r} (e.g. cell {first!r})"))

    if pert_col is not None:
        pairs = _pairs(sub, pert_col, schema.perturbation_type_key)
        for (pv, tv), _n in pairs.items():
            if tv is None or schema.is_control_value(pv):
                continue
            types, pert_parts = _parts(tv), _parts(pv)
            if types is None:
                issues.append(SchemaIssue("perturbation_type_key",
                                          f"perturbation type {tv!r} in column "
                                          f"{schema.perturbation_type_key!r} has an empty part; "
                                          "write one type, or one per part like CRISPRa+CRISPRi"))
                continue
            if pert_parts is None:
                continue                     # reported by _check_labels
            n_types, n_parts = len(types), len(pert_parts)
            if n_types > 1 and n_types != n_parts:
                issues.append(SchemaIssue("perturbation_type_key",
                                          f"perturbation type {tv!r} gives {n_types} types for "
                                          f"perturbation {pv!r}; give one type per cell"))
        issues.extend(_check_doses(sub, schema, pert_col))
    return _dedupe(issues)


def _check_labels(s: pd.Series, schema: Schema, col: str, ctrl_values: set) -> list[SchemaIssue]:
    """Perturbation labels that cannot be read as a combination: an empty part (``A+``, ``+A``,
    ``+``) or a target named twice (``A+A``, ``CBL+cbl``). Same rules as
    :meth:`Condition.parse` and :meth:`ConditionSpace.validate` (one splitter,
    :func:`engine.conditions.spec.split_parts`). One issue per kind, naming up to 5 labels."""
    counts = s.astype(object).value_counts()
    empty: list[tuple[str, int]] = []
    twice: list[tuple[str, int, list[str]]] = []
    for v, n in counts.items():
        if n == 0 or v in ctrl_values:
            continue
        parts = _parts(v)
        if parts is None:
            empty.append((str(v), int(n)))
            continue
        rep = repeated_targets(p for p in parts if not schema.is_control_value(p))
        if rep:
            twice.append((str(v), int(n), rep))
    issues = []
    if empty:
        issues.append(SchemaIssue("perturbation_key",
                                  f"{_labels(empty, col)} an empty part; combinations are "
                                  "written like A+B, with a name on each side of every +; fix "
                                  "the label or mark it to drop"))
    if twice:
        v, _, rep = twice[0]
        issues.append(SchemaIssue("perturbation_key",
                                  f"{_labels([(v, n) for v, n, _ in twice], col)} a target "
                                  f"named twice ({v!r} names {', '.join(rep)} twice); a "
                                  "combination names each target once. If these cells carry "
                                  f"two guides against the same gene, relabel them {rep[0]!r} "
                                  "(one target); if they are a different perturbation, give "
                                  "them a label of their own"))
    return issues


def _labels(bad: list[tuple[str, int]], col: str) -> str:
    """``perturbation 'A+' in column 'p' (3 cells) has`` / ``3 perturbation labels ... have``."""
    if len(bad) == 1:
        return f"perturbation {bad[0][0]!r} in column {col!r} ({bad[0][1]} cells) has"
    shown = ", ".join(f"{v!r} ({n} cells)" for v, n in bad[:5])
    more = f", ... ({len(bad)} labels, {sum(n for _, n in bad)} cells in all)" \
        if len(bad) > 5 else ""
    return f"{len(bad)} perturbation labels in column {col!r}, {shown}{more}, have"


def _pairs(obs: pd.DataFrame, a: str, b: str | None) -> dict:
    if b is None:
        return {}
    df = pd.DataFrame({"a": obs[a].astype(object), "b": obs[b].astype(object)})
    g = df.groupby(["a", "b"], dropna=False, sort=False).size()
    return {(k[0], None if (isinstance(k[1], float) and math.isnan(k[1])) else k[1]): int(n)
            for k, n in g.items()}


def _check_doses(sub: pd.DataFrame, schema: Schema, pert_col: str) -> list[SchemaIssue]:
    col = schema.dose_key
    if col is None:
        return []
    issues = []
    for (pv, dv), _n in _pairs(sub, pert_col, col).items():
        if dv is None:
            continue
        ctrl = schema.is_control_value(pv)
        if isinstance(dv, int | float | np.integer | np.floating) and not isinstance(dv, bool):
            parts = [float(dv)]
        else:
            raw = _parts(dv) or ("",)
            parts = []
            for r in raw:
                try:
                    parts.append(float(r))
                except ValueError:
                    issues.append(SchemaIssue("dose_key", f"dose {dv!r} in column {col!r} is "
                                                          "not a number (combinations are "
                                                          "written like 1+0.5)"))
                    parts = []
                    break
            if not parts:
                continue
        bad = [p for p in parts if not math.isfinite(p) or p < 0]
        if bad:
            issues.append(SchemaIssue("dose_key", f"dose {dv!r} in column {col!r} must be a "
                                                  "finite number >= 0"))
            continue
        n_parts = len(_parts(pv) or ())
        if not ctrl and n_parts and len(parts) > 1 and len(parts) != n_parts:
            issues.append(SchemaIssue("dose_key", f"dose {dv!r} has {len(parts)} numbers but "
                                                  f"perturbation {pv!r} has {n_parts} parts"))
    return issues


def _dedupe(issues: list[SchemaIssue]) -> list[SchemaIssue]:
    seen, out = set(), []
    for i in issues:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
