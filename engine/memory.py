"""Memory for generation: what a run needs, what is available, and running out as ResourceError.

Where the memory of ``generate`` / ``perturb`` goes (``n`` cells, ``G`` genes, ``nnz`` = stored
non-zero counts = n * G * density), as measured by ``build_scripts/bench_memory_guard.py``
(``docs/results/memory_guard.txt``):

- the NB draws are collected batch by batch into growable buffers (:class:`CsrBuilder`), 12
  bytes per non-zero: int32 gene index, int32 count, float32 log-normalised value; the X matrix
  gets its own copy of the gene indices (4 bytes) at the end, so the result holds 16 bytes per
  non-zero. The buffers grow by ``realloc`` (on Linux ``mremap``: no second copy) and are sized
  from the model's density, so there is never an old and a new copy of them at once;
- per cell: the cell names (a Python string each), row pointers and obs codes
  (``BYTES_PER_CELL``), and the byte strings h5py builds while writing the names
  (``H5AD_BYTES_PER_CELL``);
- per batch: the dense (batch, G) blocks of the decoder and of the NB sampler;
- once: the libraries the first run imports (anndata, h5py, pandas) and torch's first-run
  buffers (``FIXED_BYTES``); the chunk buffers of the CSV writer (``CSV_BYTES_PER_VALUE``).

The end of the module estimates sizes on disk (h5ad, CSV) for the free-space checks of
:mod:`engine.export`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.io_common import available_memory
from .errors import ResourceError

if TYPE_CHECKING:
    from anndata import AnnData

GIB = 2**30
MIB = 2**20

#: Result matrices: counts (int32 value + int32 index) and X (float32 value + int32 index).
BYTES_PER_NONZERO = 16
#: Cell names (a str object each + the Index holding them), row pointers, obs codes (measured).
BYTES_PER_CELL = 140
#: Writing h5ad: the cell names' byte strings and pointers that h5py builds (measured).
H5AD_BYTES_PER_CELL = 100
#: Writing CSV: per value of a chunk (up to ``CSV_CHUNK_VALUES``): the dense block as int32 and
#: int64, its frames and text (measured: about 124 MiB for a full chunk).
CSV_BYTES_PER_VALUE = 40
CSV_CHUNK_VALUES = 4_000_000
#: Dense float32 (batch, genes) blocks alive at once while decoding and drawing NB counts.
DENSE_BLOCKS = 7
#: What the first generation imports (anndata, h5py) and torch's first-run buffers, on top of a
#: process that has loaded the model and imported engine.export, as the CLI has (measured).
FIXED_BYTES = 36 * MIB
#: Refuse when the estimate exceeds this fraction of the memory available.
USABLE_FRACTION = 0.9
#: Encoded cells of ``perturb``: (n, latent+1) float32, the blocks and their concatenation.
PERTURB_LATENT_COPIES = 3
#: What ``write=`` can name.
WRITES = ("h5ad", "csv", "any", "none")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory a run adds to the process, in bytes, with its parts."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in self.parts.items())


def generation_estimate(n_cells: int, n_genes: int, density: float, *, batch_size: int = 2048,
                        latent_dim: int = 32, perturb: bool = False,
                        write: str = "any") -> MemoryEstimate:
    """Peak memory of generating ``n_cells`` cells (all conditions together) and writing them.

    ``write``: ``"h5ad"``, ``"csv"``, ``"any"`` (the larger of the two: the caller may choose
    either later) or ``"none"``. ``perturb`` adds the encoded input cells of
    :meth:`PerturbModel.perturb` (the input matrix itself is already in memory: not counted)."""
    if write not in WRITES:
        raise ValueError(f"write must be one of {WRITES}, got {write!r}")
    n, g = max(int(n_cells), 0), max(int(n_genes), 1)
    density = min(max(float(density), 0.0), 1.0)
    nnz = n * g * density
    batch = max(1, min(int(batch_size), n or 1))
    parts = {
        "result matrices": int(nnz * BYTES_PER_NONZERO),
        "cell names and labels": int(n * BYTES_PER_CELL),
        "dense blocks": int(batch * g * 4 * DENSE_BLOCKS),
        "libraries": FIXED_BYTES,
    }
    if perturb:
        parts["encoded cells"] = int(n * (latent_dim + 1) * 4 * PERTURB_LATENT_COPIES)
    h5ad = int(n * H5AD_BYTES_PER_CELL)
    csv = CSV_BYTES_PER_VALUE * min(n * g, CSV_CHUNK_VALUES)
    parts["writing"] = {"h5ad": h5ad, "csv": csv, "any": max(h5ad, csv), "none": 0}[write]
    return MemoryEstimate(sum(parts.values()), parts)


def max_cells_within(budget: int, n_genes: int, density: float, **kw) -> int:
    """The most cells whose :func:`generation_estimate` fits in ``budget`` bytes (0 if none)."""
    lo, hi = 0, 1
    while generation_estimate(hi, n_genes, density, **kw).total <= budget and hi < 10**12:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if generation_estimate(mid, n_genes, density, **kw).total <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def check_generation_memory(n_cells: int, n_genes: int, density: float, *, what: str,
                            available: int | None = None, **kw) -> MemoryEstimate:
    """Raise :class:`ResourceError` if ``what`` (e.g. "generating 5,000,000 cells") would not fit
    in the memory available now; return the estimate otherwise."""
    est = generation_estimate(n_cells, n_genes, density, **kw)
    avail = available_memory() if available is None else available
    if avail is not None and est.total > USABLE_FRACTION * avail:
        fit = max_cells_within(int(USABLE_FRACTION * avail), n_genes, density, **kw)
        hint = (f"at most about {fit:,} cells fit now" if fit else "close other programs first")
        raise ResourceError(
            f"{what} ({n_genes:,} genes) needs about {est.total / GIB:.1f} GiB of memory, but "
            f"only {avail / GIB:.1f} GiB is available; generate fewer cells per run ({hint}) "
            "or split the experiment into several runs")
    return est


# -- running out of memory -------------------------------------------------------------------


_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory",
              "not enough memory", "failed to allocate", "std::bad_alloc")


def is_out_of_memory(e: BaseException) -> bool:
    """True for MemoryError and for torch's CPU / CUDA allocation failures."""
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, RuntimeError):
        text = str(e).lower()
        return any(w in text for w in _OOM_WORDS)
    return False


@contextlib.contextmanager
def out_of_memory_as_resource_error(what: str, estimate: MemoryEstimate | None = None,
                                    ) -> Iterator[None]:
    """Turn running out of memory inside the block into one :class:`ResourceError` line."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        need = f" (it needs about {estimate.total / GIB:.1f} GiB)" if estimate else ""
        avail = available_memory()
        have = f"; {avail / GIB:.1f} GiB is available now" if avail is not None else ""
        raise ResourceError(f"ran out of memory while {what}{need}{have}; nothing was kept. "
                            "Generate fewer cells per run, or split the experiment into "
                            "several runs") from None


# -- collecting the draws --------------------------------------------------------------------


class _Growable:
    """A 1-d array that grows in place (``ndarray.resize``: ``realloc``, no second copy on Linux);
    pages are only committed when written, so a generous initial capacity costs nothing."""

    def __init__(self, dtype, capacity: int) -> None:
        self.a = np.empty(max(int(capacity), 1024), dtype)
        self.n = 0

    def append(self, values: np.ndarray) -> None:
        k = len(values)
        need = self.n + k
        if need > len(self.a):
            self.a.resize(max(need, int(len(self.a) * 1.25) + 4096), refcheck=False)
        self.a[self.n:need] = values
        self.n = need

    def take(self) -> np.ndarray:
        a, self.a = self.a, np.empty(0, self.a.dtype)
        a.resize(self.n, refcheck=False)
        return a


class CsrBuilder:
    """Collects the NB draws of each batch into the counts matrix and its log-normalised X.

    ``add(idx, values, rows)`` takes a batch as flat row-major indices into (rows, genes) and
    int32 counts; X = log1p(counts / library * 1e4), computed per batch in float64 and stored as
    float32 (the same numbers as normalising the whole matrix at once)."""

    def __init__(self, n_rows: int, n_genes: int, nnz_hint: float) -> None:
        self.n_rows, self.n_genes = int(n_rows), int(n_genes)
        self.indptr = np.zeros(self.n_rows + 1, np.int64)
        self.rows = 0
        cap = int(max(nnz_hint, 0)) + 4096
        self.indices = _Growable(np.int32, cap)
        self.data = _Growable(np.int32, cap)
        self.xdata = _Growable(np.float32, cap)

    def add(self, idx: np.ndarray, values: np.ndarray, rows: int) -> None:
        g = self.n_genes
        r = idx // g
        cnt = np.bincount(r, minlength=rows)
        start = self.indptr[self.rows]
        self.indptr[self.rows + 1:self.rows + rows + 1] = np.cumsum(cnt) + start
        rowsum = np.bincount(r, weights=values, minlength=rows)
        scale = np.repeat(1e4 / np.maximum(rowsum, 1.0), cnt)
        self.indices.append(idx % g)
        self.data.append(values)
        self.xdata.append(np.log1p(values * scale))
        self.rows += rows

    def finish(self):
        """(counts, X) as CSR matrices of shape (rows, genes)."""
        import scipy.sparse as sp

        if self.rows != self.n_rows:
            raise RuntimeError(f"CsrBuilder: {self.rows} of {self.n_rows} rows were added")
        nnz = int(self.indptr[-1])
        indptr = self.indptr.astype(np.int32) if nnz < 2**31 - 1 else self.indptr
        self.indptr = None
        shape = (self.n_rows, self.n_genes)
        indices, data, xdata = self.indices.take(), self.data.take(), self.xdata.take()
        counts = sp.csr_matrix((data, indices, indptr), shape=shape)
        x = sp.csr_matrix((xdata, indices.copy(), indptr.copy()), shape=shape)
        return counts, x


# -- sizes on disk (for the free-space checks of engine.export) ------------------------------


_VLEN_OVERHEAD = 48          # bytes per variable-length string in HDF5 (heap object + id)
_ELEMENT_OVERHEAD = 8192     # object header, B-tree and attributes per dataset / group


def _strings_bytes(values) -> int:
    total = n = 0
    for v in values:
        total += len(str(v).encode("utf-8", "surrogatepass"))
        n += 1
    return total + n * _VLEN_OVERHEAD


def _array_bytes(a: np.ndarray) -> int:
    if a.dtype.kind in "OUS":
        return _strings_bytes(a.ravel())
    return int(a.nbytes)


def _frame_bytes(df) -> int:
    import pandas as pd

    total = _strings_bytes(df.index) + _strings_bytes(df.columns) + _ELEMENT_OVERHEAD
    for _, col in df.items():
        total += _ELEMENT_OVERHEAD
        if isinstance(col.dtype, pd.CategoricalDtype):
            total += int(col.cat.codes.nbytes) + _strings_bytes(col.cat.categories)
        elif col.dtype.kind in "biufcmM":
            total += int(col.to_numpy().nbytes)
        else:                                       # strings (become categoricals), objects
            total += _strings_bytes(col.to_numpy())
    return total


def _elem_bytes(x: Any, depth: int = 0) -> int:
    import pandas as pd
    import scipy.sparse as sp

    if x is None or depth > 50:
        return 0
    if sp.issparse(x):
        x = x if x.format in ("csr", "csc") else x.tocsr()
        return int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) + 3 * _ELEMENT_OVERHEAD
    if isinstance(x, pd.DataFrame):
        return _frame_bytes(x)
    if isinstance(x, np.ndarray):
        return _array_bytes(x) + _ELEMENT_OVERHEAD
    if isinstance(x, Mapping):
        return _ELEMENT_OVERHEAD + sum(_elem_bytes(v, depth + 1) + len(str(k)) + 64
                                       for k, v in x.items())
    if isinstance(x, str):
        return len(x.encode("utf-8", "surrogatepass")) + _ELEMENT_OVERHEAD
    if isinstance(x, bool | int | float | np.generic):
        return _ELEMENT_OVERHEAD
    if isinstance(x, list | tuple):
        return _ELEMENT_OVERHEAD + sum(_elem_bytes(v, depth + 1) for v in x)
    if hasattr(x, "nbytes"):                        # backed / dask / other array types
        return int(x.nbytes) + _ELEMENT_OVERHEAD
    return len(str(x)) + _ELEMENT_OVERHEAD


def estimate_h5ad_bytes(adata: AnnData) -> int:
    """An upper bound of the size of ``adata`` written as h5ad, compressed or not: every array
    uncompressed (compression never makes a chunk larger than ~0.1 %), strings as HDF5 stores
    them, plus per-element overhead and a 2 % margin."""
    raw = adata.raw
    total = sum(_elem_bytes(v) for v in (
        adata.X, adata.obs, adata.var, dict(adata.obsm), dict(adata.varm), dict(adata.obsp),
        dict(adata.varp), dict(adata.layers), dict(adata.uns)))
    if raw is not None:
        total += _elem_bytes(raw.X) + _elem_bytes(raw.var) + _elem_bytes(dict(raw.varm))
    return int(total * 1.02) + 2 * 2**20


def estimate_output_bytes(n_cells: int, n_genes: int, density: float,
                          path: str | os.PathLike) -> int:
    """About the size of ``n_cells`` generated cells written to ``path``, before generating them
    (for ``preflight_output(path, need_bytes=...)``): for h5ad the uncompressed upper bound that
    :func:`write_h5ad` checks, for CSV the text (a twentieth of it for ``.gz``)."""
    n, g = max(int(n_cells), 0), max(int(n_genes), 1)
    nnz = n * g * min(max(float(density), 0.0), 1.0)
    name = Path(path).name.lower()
    if name.endswith(".h5ad"):
        per_cell = 2 * 4 + 6 + 16 + _VLEN_OVERHEAD        # row pointers, labels, name
        return int((nnz * 16 + n * per_cell + g * 64) * 1.02) + 2 * 2**20
    text = 2 * n * g + 2 * nnz + 80 * n + 16 * g + 4096   # "0," per zero, digits, labels
    return int(text // 20 if name.endswith(".gz") else text)


def estimate_csv_bytes(adata: AnnData, m, as_int: bool, cols: list[str]) -> int:
    """About the size of the uncompressed CSV: one character and a separator per zero, the
    digits of each non-zero (counted exactly for integers, about 9 for floats), names, labels."""
    import pandas as pd
    import scipy.sparse as sp

    n, g = adata.n_obs, adata.n_vars
    data = m.data if sp.issparse(m) else None
    if data is None:
        nnz = int(np.count_nonzero(np.asarray(m)))
        extra = nnz * (8 if not as_int else 2)
    elif as_int:
        nnz, extra = len(data), 0
        for start in range(0, len(data), 16_000_000):
            d = np.abs(data[start:start + 16_000_000])
            extra += sum(int(np.count_nonzero(d >= 10**k)) for k in range(1, 19))
            extra += int(np.count_nonzero(data[start:start + 16_000_000] < 0))
    else:
        nnz = len(data)
        extra = nnz * 8
    labels = 0
    for c in cols:
        col = adata.obs[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            lens = np.array([len(str(v)) + 2 for v in col.cat.categories] or [0])
            codes = col.cat.codes.to_numpy()
            labels += int(lens[codes[codes >= 0]].sum()) + int((codes < 0).sum()) + n
        else:
            labels += n * 12
    names = sum(len(str(v)) for v in adata.obs_names) + n
    header = sum(len(str(v)) + 1 for v in adata.var_names) + 64 * (len(cols) + 1)
    return int(2 * n * g + extra + labels + names + header) + 4096
