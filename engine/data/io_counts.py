"""Finding the raw counts of a dataset and checking every stored value of them.

Which matrix holds the counts (``layers['counts']``, ``X`` or ``raw.X``) is decided on a sample
of rows, so that log-normalised ``X`` is told apart from counts quickly. The matrix chosen is
then checked in full, every stored value, in chunks: one NaN, infinite, negative or non-integer
value anywhere refuses the data with the first bad cell and gene named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ..errors import DataError

if TYPE_CHECKING:
    from anndata import AnnData

_SAMPLE_ROWS = 2000
_CHUNK = 1 << 22  # values checked per pass (bounded temporary memory)
_KINDS = ("NaN", "infinite", "negative", "non-integer")


def locations(adata: AnnData):
    """``(where, matrix)`` for each place raw counts may be, in order of preference."""
    if "counts" in adata.layers:
        yield "layers['counts']", adata.layers["counts"]
    if adata.X is not None:
        yield "X", adata.X
    if adata.raw is not None:
        yield "raw.X", adata.raw.X


def _sample_values(m) -> np.ndarray:
    """Values of the first and of evenly spaced rows (up to ~2x2000 rows), as a flat array."""
    n = m.shape[0]
    if n <= 2 * _SAMPLE_ROWS:
        rows = np.arange(n)
    else:
        rows = np.unique(np.concatenate([np.arange(_SAMPLE_ROWS),
                                         np.linspace(0, n - 1, _SAMPLE_ROWS).astype(np.int64)]))
    if sp.issparse(m):
        sub = m[rows] if len(rows) < n else m
        return np.asarray(sp.csr_matrix(sub).data)
    return np.asarray(m[rows] if len(rows) < n else m).ravel()


@dataclass
class BadValues:
    """What a full scan found: how many values of each kind, and the first one (row-major)."""

    n_stored: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_KINDS, 0))
    first: tuple[int, int, float] | None = None  # row, column, value

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def kind_of(self, value: float) -> str:
        if np.isnan(value):
            return "NaN"
        if np.isinf(value):
            return "infinite"
        return "negative" if value < 0 else "non-integer"


def _classify(block: np.ndarray, found: BadValues) -> np.ndarray | None:
    """Count the bad values of a flat block; return the mask of bad values (None if none)."""
    if block.dtype == np.bool_ or np.issubdtype(block.dtype, np.unsignedinteger):
        return None
    if np.issubdtype(block.dtype, np.integer):
        neg = block < 0
        n = int(np.count_nonzero(neg))
        found.counts["negative"] += n
        return neg if n else None
    finite = np.isfinite(block)
    if finite.all():
        with np.errstate(invalid="ignore"):
            bad = (block < 0) | (block != np.floor(block))
        if not bad.any():
            return None
        neg = int(np.count_nonzero(block < 0))
        found.counts["negative"] += neg
        found.counts["non-integer"] += int(np.count_nonzero(bad)) - neg
        return bad
    nan = np.isnan(block)
    found.counts["NaN"] += int(np.count_nonzero(nan))
    found.counts["infinite"] += int(np.count_nonzero(~finite & ~nan))
    with np.errstate(invalid="ignore"):
        neg = finite & (block < 0)
        frac = finite & ~neg & (block != np.floor(block))
    found.counts["negative"] += int(np.count_nonzero(neg))
    found.counts["non-integer"] += int(np.count_nonzero(frac))
    return ~finite | neg | frac


def scan_counts(m) -> BadValues | None:
    """Check every stored value of ``m`` (sparse or dense); None when all are counts."""
    found = BadValues()
    if sp.issparse(m):
        if m.format not in ("csr", "csc"):
            m = sp.csr_matrix(m)
        data, indptr, indices = m.data, m.indptr, m.indices
        found.n_stored = int(data.size)
        for start in range(0, data.size, _CHUNK):
            bad = _classify(data[start:start + _CHUNK], found)
            if bad is None:
                continue
            pos = np.flatnonzero(bad) + start
            major = np.searchsorted(indptr, pos, side="right") - 1
            minor = indices[pos]
            rows, cols = (major, minor) if m.format == "csr" else (minor, major)
            k = np.lexsort((cols, rows))[0]
            cand = (int(rows[k]), int(cols[k]), float(data[pos[k]]))
            if found.first is None or cand[:2] < found.first[:2]:
                found.first = cand
    else:
        if hasattr(m, "to_memory"):  # backed / lazy arrays
            m = m.to_memory()
        m = np.asarray(m)
        if m.ndim != 2:
            m = m.reshape(m.shape[0], -1)
        n_rows, n_cols = m.shape
        found.n_stored = int(n_rows) * int(n_cols)
        step = max(1, _CHUNK // max(n_cols, 1))
        for r0 in range(0, n_rows, step):
            block = np.ascontiguousarray(m[r0:r0 + step]).ravel()
            bad = _classify(block, found)
            if bad is not None and found.first is None:
                i = int(np.flatnonzero(bad)[0])
                found.first = (r0 + i // n_cols, i % n_cols, float(block[i]))
    return found if found.total else None


def _name(names, i: int) -> str:
    try:
        return str(names[i])
    except (IndexError, TypeError):
        return "?"


def bad_counts_message(where: str, found: BadValues, obs_names, var_names,
                       source: str | Path | None = None) -> str:
    row, col, value = found.first
    kinds = ", ".join(f"{n:,} {k}" for k, n in found.counts.items() if n)
    prefix = f"{source}: " if source is not None else ""
    return (f"{prefix}{where} holds {found.kind_of(value)} values: {found.total:,} of "
            f"{found.n_stored:,} stored values are not raw counts ({kinds}); the first is "
            f"{value:.6g} in row {row + 1:,} of {len(obs_names):,} (cell "
            f"{_name(obs_names, row)!r}), column {col + 1:,} of {len(var_names):,} (gene "
            f"{_name(var_names, col)!r}). Raw counts must be finite whole numbers >= 0: fix or "
            "remove the affected cells")


def _sample_problem(where: str, m) -> tuple[str | None, bool]:
    """(problem, fatal): problem None when the sample looks like raw counts; fatal when the
    sample holds NaN or infinite values (then the full scan names them)."""
    dtype = getattr(m, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        return f"{where} is not numeric (dtype {dtype})", False
    if np.issubdtype(dtype, np.complexfloating):
        return f"{where} holds complex numbers (dtype {dtype})", False
    if m.shape[0] == 0:
        return f"{where} is empty", False
    if hasattr(m, "to_memory") and not sp.issparse(m):
        m = m.to_memory()
    vals = _sample_values(m)
    if vals.size == 0 or np.issubdtype(vals.dtype, np.integer) or vals.dtype == np.bool_:
        if vals.size and vals.min() < 0:
            return f"{where} holds negative values (e.g. {vals[vals < 0][0]})", False
        return None, False
    finite = np.isfinite(vals)
    if not finite.all():
        return None, True
    neg = vals < 0
    if neg.any():
        return (f"{where} holds negative values (e.g. {vals[neg][0]:.3g}), which looks like "
                "scaled data"), False
    frac = vals != np.round(vals)
    if frac.any():
        ex = float(vals[frac][0])
        hint = "log-normalised" if float(vals.max()) < 30 else "normalised"
        return (f"{where} holds non-integer values (e.g. {ex:.3g}), which looks like {hint} "
                "data"), False
    return None, False


def find_counts(adata: AnnData, source: str | Path | None = None
                ) -> tuple[object | None, str | None, str | None]:
    """``(matrix, where, None)`` for the first location holding raw counts, else
    ``(None, None, problem)``. Raises :class:`DataError` when the chosen location (or one whose
    sample holds NaN / infinite values) has any bad value; ``source`` names the file."""
    problems = []
    for where, m in locations(adata):
        problem, fatal = _sample_problem(where, m)
        if problem is None:
            found = scan_counts(m)
            if found is not None:
                var_names = adata.raw.var_names if where == "raw.X" else adata.var_names
                raise DataError(bad_counts_message(where, found, adata.obs_names, var_names,
                                                   source))
            if fatal:  # pragma: no cover (the sample saw a NaN the full scan must see too)
                raise DataError(f"{where} holds NaN or infinite values")
            return m, where, None
        problems.append(problem)
    if not problems:
        return None, None, "the dataset has no expression matrix"
    return None, None, ("; ".join(problems) + "; a count model needs raw UMI counts in "
                        "layers['counts'] or X")


def get_counts(adata: AnnData, *, source: str | Path | None = None) -> tuple[sp.csr_matrix, str]:
    """Find the raw integer UMI counts of a dataset.

    Looks in ``layers['counts']``, then ``X``, then ``raw.X``, and takes the first whose sample
    of rows (the first 2000 and 2000 spread over the rest) holds non-negative integers. Every
    stored value of the matrix taken is then checked.

    Parameters
    ----------
    adata
        The dataset.
    source
        The file it came from, named in error messages.

    Returns
    -------
    counts, source
        A float32 CSR copy of the counts, and where they came from: ``"layers['counts']"``,
        ``"X"`` or ``"raw.X"``.

    Raises
    ------
    DataError
        No location holds raw counts (the message says what each one holds instead, e.g.
        log-normalised values), or the counts hold a NaN, infinite, negative or non-integer
        value anywhere (the message names the first such cell and gene, and how many).
    """
    m, where, problem = find_counts(adata, source)
    if m is None:
        raise DataError(problem)
    if sp.issparse(m):
        out = sp.csr_matrix(m, dtype=np.float32, copy=True)
    else:
        if hasattr(m, "to_memory"):
            m = m.to_memory()
        out = sp.csr_matrix(np.asarray(m, dtype=np.float32))
    out.eliminate_zeros()
    return out, where
