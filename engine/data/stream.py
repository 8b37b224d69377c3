"""Out-of-core counts: minibatches read from a backed h5ad, never the whole matrix in memory.

The reader is h5py on the CSR arrays of the file (``layers["counts"]`` when it holds a CSR
matrix, else ``X``), the same arrays anndata's backed mode wraps (``anndata.read_h5ad(path,
backed="r")`` reads them through ``h5py`` too). Going to h5py directly keeps ``obs`` out of
memory (only the role columns are read, not the cell names) and reads a run of rows as three
slices (``indptr``, ``indices``, ``data``); ``build_scripts/bench_scale.py`` measures both.
``annbatch`` and ``scdataset`` are not installed here (no network for pip); the shuffling below
is scdataset's scheme (contiguous blocks in random order, a pool of several blocks shuffled
together).

- :class:`H5adCounts`: the file, its role columns, row ranges as CSR.
- :func:`scan`: one pass for library sizes, per-gene sums for the gene selection, and the check
  that every stored value is a non-negative integer.
- :func:`hvg_seurat`: scanpy's ``seurat`` flavour from those sums (chunks, no dense copy).
- :class:`BlockShuffler`: minibatch row indices, block-shuffled with a pool of ``pool_blocks``
  blocks, each rank of a data-parallel run taking its own blocks.
- :class:`Prefetcher`: a background thread that reads and densifies the next minibatches
  (pinned memory on CUDA).

Memory: the ``indptr`` of the file (8 bytes a cell), the role columns and a few per-cell
numbers (condition code, library size: about 12 bytes a cell) plus one pool of blocks; never
the count matrix.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError

#: Rows read at once by a scan (a chunk of 8192 cells x 300 stored values is ~20 MB).
SCAN_CHUNK = 8192
#: Consecutive rows a minibatch block is made of, and blocks pooled and shuffled together.
BLOCK_ROWS = 64
POOL_BLOCKS = 128


class H5adCounts:
    """The raw counts of an h5ad file read in row ranges (CSR ``layers['counts']`` or ``X``).

    Raises :class:`DataError` (naming the file) when neither location holds a CSR matrix: a
    dense or CSC matrix cannot be streamed by rows; read it in memory instead."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: cannot be opened as HDF5 ({e})") from None
        f = self._f
        where = None
        for key, name in (("layers/counts", "layers['counts']"), ("X", "X")):
            if key in f and _encoding(f[key]) == "csr_matrix":
                where, self.source = f[key], name
                break
        if where is None:
            kinds = {k: _encoding(f[k]) for k in ("layers/counts", "X") if k in f}
            raise DataError(f"{self.path}: streaming needs the counts as a CSR matrix in "
                            f"layers['counts'] or X; found {kinds or 'neither'}. Train without "
                            "--streaming (in memory)")
        self.shape = tuple(int(s) for s in where.attrs["shape"])
        self.indptr = where["indptr"][:].astype(np.int64)
        self._indices, self._data = where["indices"], where["data"]
        if len(self.indptr) != self.shape[0] + 1 or self.indptr[-1] != self._data.shape[0]:
            raise DataError(f"{self.path}: {self.source}/indptr does not match its shape")
        from anndata.io import read_elem

        var = read_elem(f["var"]) if "var" in f else pd.DataFrame(index=range(self.shape[1]))
        self.var_names = pd.Index(var.index.astype(str))
        self.var = var

    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def n_vars(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def close(self) -> None:
        self._f.close()

    def obs_columns(self) -> list[str]:
        """The ``obs`` columns in the file's order (``column-order``)."""
        g = self._f["obs"]
        order = [c.decode() if isinstance(c, bytes) else str(c)
                 for c in np.atleast_1d(g.attrs.get("column-order", []))]
        rest = [k for k in g.keys() if k != g.attrs.get("_index", "_index") and k not in order]
        return [c for c in order if c in g] + sorted(rest)

    def obs(self, columns: Sequence[str]) -> pd.DataFrame:
        """The named ``obs`` columns (only those: no cell names), index 0..n-1 as text."""
        from anndata.io import read_elem

        g = self._f["obs"]
        out = {}
        for c in columns:
            if c not in g:
                raise DataError(f"{self.path}: no obs column {c!r}; columns are: "
                                f"{', '.join(self.obs_columns())}")
            out[c] = read_elem(g[c])
        return pd.DataFrame(out, index=pd.RangeIndex(self.n_obs).astype(str))

    def rows(self, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo:hi`` as float32 CSR (all genes)."""
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        ptr = self.indptr[lo:hi + 1] - a
        return sp.csr_matrix((self._data[a:b].astype(np.float32, copy=False),
                              self._indices[a:b], ptr), shape=(hi - lo, self.n_vars))

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        """Rows ``rows`` (any order) as float32 CSR, reading each run of consecutive rows once."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return sp.csr_matrix((0, self.n_vars), dtype=np.float32)
        step = np.diff(rows)
        if (step == 1).all():                              # one run: a single read
            return self.rows(int(rows[0]), int(rows[-1]) + 1)
        ordered = bool((step > 0).all())
        order = None if ordered else np.argsort(rows, kind="stable")
        s = rows if ordered else rows[order]
        breaks = np.flatnonzero(np.diff(s) != 1) + 1
        parts = [self.rows(int(r[0]), int(r[-1]) + 1) for r in np.split(s, breaks)]
        m = sp.vstack(parts, format="csr")
        if ordered:
            return m
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return m[inv]

    def chunks(self, rows: np.ndarray | None = None, size: int = SCAN_CHUNK
               ) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
        """(row numbers, CSR) for consecutive chunks of ``rows`` (sorted; all rows if None)."""
        if rows is None:
            for lo in range(0, self.n_obs, size):
                hi = min(lo + size, self.n_obs)
                yield np.arange(lo, hi), self.rows(lo, hi)
            return
        for s in range(0, len(rows), size):
            r = rows[s:s + size]
            yield r, self.take(r)


def _encoding(obj) -> str | None:
    v = obj.attrs.get("encoding-type")
    return v.decode() if isinstance(v, bytes) else (str(v) if v is not None else
                                                    ("array" if hasattr(obj, "shape") else None))


class BackedDataset:
    """An h5ad opened for training from disk: ``obs`` in memory, counts on disk.

    Behaves like the parts of an AnnData that the schema, the hold-out split and the exclude
    rules use (``obs``, ``n_obs``, ``var_names``, ``ds[mask]``, ``.copy()``); ``rows`` are the
    file rows of its cells. ``obs`` holds the categorical, numeric and boolean columns (text
    columns too when the file has at most :data:`TEXT_COLUMNS_MAX_CELLS` cells), never the cell
    names. :meth:`to_memory` reads some of its cells as an in-memory AnnData."""

    TEXT_COLUMNS_MAX_CELLS = 1_000_000

    def __init__(self, counts: H5adCounts, obs: pd.DataFrame, rows: np.ndarray) -> None:
        self.counts, self.obs, self.rows = counts, obs, np.asarray(rows, np.int64)

    @classmethod
    def open(cls, path: str | Path) -> BackedDataset:
        from anndata.io import read_elem

        counts = H5adCounts(path)
        g = counts._f["obs"]
        cols = {}
        for c in counts.obs_columns():
            enc = _encoding(g[c])
            if enc == "categorical" or (enc in ("array", "nullable-integer", "nullable-boolean")
                                        and g[c].dtype.kind in "biuf"):
                cols[c] = read_elem(g[c])
            elif counts.n_obs <= cls.TEXT_COLUMNS_MAX_CELLS:
                cols[c] = read_elem(g[c])
        obs = pd.DataFrame(cols, index=pd.RangeIndex(counts.n_obs))
        return cls(counts, obs, np.arange(counts.n_obs))

    @property
    def n_obs(self) -> int:
        return len(self.rows)

    @property
    def n_vars(self) -> int:
        return self.counts.n_vars

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_obs, self.n_vars)

    @property
    def var_names(self) -> pd.Index:
        return self.counts.var_names

    def __getitem__(self, index) -> BackedDataset:
        index = np.asarray(index)
        pos = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        return BackedDataset(self.counts, self.obs.iloc[pos], self.rows[pos])

    def copy(self) -> BackedDataset:
        return self

    def to_memory(self, positions: np.ndarray | None = None):
        """The cells at ``positions`` (all if None) as an AnnData with the counts in ``X`` and
        ``layers['counts']``; cell names from the file."""
        import anndata as ad

        pos = np.arange(self.n_obs) if positions is None else np.asarray(positions, np.int64)
        rows = self.rows[pos]
        m = self.counts.take(rows)
        g = self.counts._f["obs"]
        key = g.attrs.get("_index", "_index")
        order = np.argsort(rows)
        try:
            names = np.empty(len(rows), object)
            raw = g[key][rows[order]] if len(rows) else []
            names[order] = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        except (KeyError, TypeError, OSError):
            names = np.array([f"cell{r}" for r in rows], object)
        obs = self.obs.iloc[pos].copy()
        obs.index = pd.Index(names.astype(str))
        out = ad.AnnData(X=m, obs=obs, var=pd.DataFrame(index=self.var_names.copy()))
        out.layers["counts"] = m.copy()
        return out

    def estimated_memory(self) -> int:
        """Bytes the in-memory training would hold at its peak (see :func:`should_stream`)."""
        return estimate_in_memory_bytes(self.counts.n_obs, self.counts.nnz)


def estimate_in_memory_bytes(n_obs: int, nnz: int) -> int:
    """Peak bytes of training in memory: the CSR read from the file, the float32 copy of
    :func:`engine.data.io.get_counts`, the copy cut to the chosen genes and scanpy's copy for the
    gene selection: four CSR matrices of ``nnz`` values (4 bytes) and indices (4 bytes) plus
    their row pointers (8 bytes a cell)."""
    return 4 * (8 * int(nnz) + 8 * int(n_obs))


#: Stream when the in-memory estimate exceeds this fraction of the available memory.
STREAM_FRACTION = 0.5


def should_stream(path: str | Path, available: int | None = None) -> tuple[bool, str]:
    """Whether ``perturb-studio train`` reads ``path`` from disk: an h5ad with CSR counts whose
    in-memory training (:func:`estimate_in_memory_bytes`) would need more than
    :data:`STREAM_FRACTION` of the available memory. Returns (decision, reason)."""
    from .io_common import available_memory, fmt_bytes

    path = Path(path)
    if path.suffix.lower() != ".h5ad" or not path.is_file():
        return False, "not an h5ad file"
    try:
        c = H5adCounts(path)
    except DataError as e:
        return False, str(e)
    try:
        need = estimate_in_memory_bytes(c.n_obs, c.nnz)
    finally:
        c.close()
    avail = available if available is not None else available_memory()
    if avail is None:
        return False, "available memory unknown"
    decision = need > STREAM_FRACTION * avail
    return decision, (f"training in memory would need about {fmt_bytes(need)}; "
                      f"{fmt_bytes(avail)} is available")


# -- opening a dataset for the app --------------------------------------------------------------
#: h5ad files larger than this open backed (also when training in memory would not fit).
BACKED_FROM_BYTES = 2 * 1024 ** 3
#: Cells of a backed dataset read into memory for the views that need cells (analysis, UMAP,
#: perturbing real cells): a random sample.
VIEW_SAMPLE_CELLS = 50_000


class OpenedDataset:
    """What :func:`open_dataset` gives: ``adata`` (the whole dataset in memory, or a random
    sample of :data:`VIEW_SAMPLE_CELLS` cells of a backed one), ``backed`` (the
    :class:`BackedDataset` to train from, None when in memory), ``summary`` (of every cell)
    and the guessed ``schema``."""

    def __init__(self, adata, backed, summary, schema) -> None:
        self.adata, self.backed, self.summary, self.schema = adata, backed, summary, schema


def open_dataset(path: str | Path, *, progress=None, backed: bool | None = None,
                 seed: int = 0) -> OpenedDataset:
    """Open a dataset for the app: in memory as :func:`engine.data.io.read_dataset` does, or,
    for an h5ad above :data:`BACKED_FROM_BYTES` or one that :func:`should_stream` would stream
    (``backed`` forces either way), backed: only ``obs`` and the gene names are read, the
    summary counts every cell, the counts stay on disk (a sample of cells is read for the
    views) and training streams them."""
    from .io import DatasetSummary, read_dataset, summarize_columns, summarize_dataset
    from .schema import guess_schema

    path = Path(path)
    if backed is None:
        backed = path.suffix.lower() == ".h5ad" and path.is_file() and (
            path.stat().st_size > BACKED_FROM_BYTES or should_stream(path)[0])
    if not backed:
        adata = read_dataset(path, progress=progress)
        return OpenedDataset(adata, None, summarize_dataset(adata), guess_schema(adata))
    from ..progress import Reporter

    report = Reporter(progress, 3, "reading")
    report(0)
    ds = BackedDataset.open(path)
    report(1)
    head = ds.counts.rows(0, min(2000, ds.n_obs)).data
    problem = None
    if len(head) and (not np.isfinite(head).all() or (head < 0).any()
                      or (head != np.round(head)).any()):
        problem = (f"{ds.counts.source} of the first cells holds values that are not raw "
                   "counts (negative or not whole numbers)")
    summary = DatasetSummary(ds.n_obs, ds.n_vars, None if problem else ds.counts.source,
                             problem, summarize_columns(ds.obs))
    report(2)
    rng = np.random.default_rng(seed)
    k = min(VIEW_SAMPLE_CELLS, ds.n_obs)
    sample = ds.to_memory(np.sort(rng.choice(ds.n_obs, k, replace=False)))
    sample.uns["perturb_studio_backed"] = {
        "file": str(path), "n_cells": int(ds.n_obs),
        "note": f"a random sample of {k:,} of the {ds.n_obs:,} cells; training reads all "
                "of them from disk"}
    report(3)
    return OpenedDataset(sample, ds, summary, guess_schema(sample))


# -- the scan -----------------------------------------------------------------------------------
class ScanStats:
    """What one pass over the counts gives: library sizes of every cell (all genes), per-gene
    sum and sum of squares of the normalised counts (each cell scaled to 10,000), nnz."""

    def __init__(self, lib, gene_sum, gene_sumsq, nnz, n):
        self.lib, self.gene_sum, self.gene_sumsq, self.nnz, self.n = (lib, gene_sum, gene_sumsq,
                                                                     nnz, n)


def scan(counts: H5adCounts, rows: np.ndarray | None = None, *, progress=None,
         cancel=None) -> ScanStats:
    """One pass over ``rows`` (sorted; every cell if None): library sizes, gene statistics for
    :func:`hvg_seurat`, and the check that every value is a finite non-negative integer
    (:class:`DataError` names the first bad cell and gene)."""
    from ..progress import Reporter, check_cancel

    n = counts.n_obs if rows is None else len(rows)
    lib = np.zeros(n, np.float64)
    s1 = np.zeros(counts.n_vars, np.float64)
    s2 = np.zeros(counts.n_vars, np.float64)
    nnz, done = 0, 0
    report = Reporter(progress, n, "scanning cells")
    for r, m in counts.chunks(rows):
        check_cancel(cancel)
        d = m.data
        bad = ~np.isfinite(d) | (d < 0) | (d != np.round(d))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(m.indptr, k, side="right") - 1)
            raise DataError(f"{counts.path}: {counts.source} holds {d[k]!r} at cell {int(r[row])}, "
                            f"gene {counts.var_names[m.indices[k]]!r}: raw counts must be "
                            "non-negative integers")
        ls = np.asarray(m.sum(axis=1), np.float64).ravel()
        lib[done:done + len(r)] = ls
        scale = 1e4 / np.maximum(ls, 1.0)
        norm = sp.csr_matrix((d.astype(np.float64) * np.repeat(scale, np.diff(m.indptr)),
                              m.indices, m.indptr), shape=m.shape)
        s1 += np.asarray(norm.sum(axis=0)).ravel()
        s2 += np.asarray(norm.multiply(norm).sum(axis=0)).ravel()
        nnz += m.nnz
        done += len(r)
        report(done)
    return ScanStats(lib, s1, s2, nnz, n)


def hvg_seurat(stats: ScanStats, n_top: int) -> np.ndarray:
    """Column indices of the ``n_top`` most highly variable genes, scanpy's ``seurat`` flavour
    (``sc.pp.highly_variable_genes(flavor="seurat")`` on ``normalize_total(1e4)`` + ``log1p``
    data) from per-gene sums: mean and variance of the normalised counts, log dispersion,
    z-scored within 20 bins of log mean expression; genes ranked by the normalised dispersion."""
    n = stats.n
    mean = stats.gene_sum / n
    var = (stats.gene_sumsq - n * mean ** 2) / max(n - 1, 1)
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    df["bin"] = pd.cut(df["means"], bins=20)
    grouped = df.groupby("bin", observed=False)["dispersions"]
    avg, dev = grouped.mean(), grouped.std(ddof=1)
    # scanpy: a bin with one gene gets sd = its mean, mean 0 (its gene normalises to 1)
    one = dev.isnull() & avg.notnull()
    dev[one], avg[one] = avg[one], 0
    codes = df["bin"].cat.codes.to_numpy()
    norm = (df["dispersions"].to_numpy() - avg.to_numpy()[codes]) / dev.to_numpy()[codes]
    norm = np.where(np.isnan(norm), -np.inf, norm)
    order = np.argsort(-norm, kind="stable")
    return np.sort(order[:n_top])


# -- minibatches --------------------------------------------------------------------------------
class BlockShuffler:
    """Minibatches for one epoch: the rows cut into blocks of ``block`` consecutive rows, the
    blocks in random order, ``pool`` blocks at a time read together (one read per block) and
    their rows shuffled, minibatches of ``batch`` rows cut from each pool (a pool's last rows
    that do not fill a minibatch wait for the next epoch). Rank ``rank`` of ``world`` takes every
    ``world``-th pool: its own shard and its own reads. Deterministic for (seed, epoch)."""

    def __init__(self, n: int, batch: int, *, block: int = BLOCK_ROWS, pool: int = POOL_BLOCKS,
                 seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed = int(n), int(batch), int(seed)
        self.rank, self.world = int(rank), max(int(world), 1)
        # small data: blocks and pools shrink so that every rank has a pool of a minibatch
        self.block = max(1, min(int(block), self.n // (self.world * 2) or 1))
        n_blocks = -(-self.n // self.block)
        self.pool = max(1, min(int(pool), n_blocks // self.world),
                        -(-self.batch // self.block))
        if self.n < self.world * self.batch:
            raise DataError(f"{self.n} cells cannot give each of {self.world} processes a "
                            f"minibatch of {self.batch}")

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """(positions of the pool's rows, sorted; the pool-local positions of each minibatch)
        for every pool of this rank in epoch ``epoch``. Positions index ``0 .. n - 1``."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        starts = np.arange(0, self.n, self.block)
        rng.shuffle(starts)
        groups = [np.sort(starts[i:i + self.pool]) for i in range(0, len(starts), self.pool)]
        for g in groups[self.rank::self.world]:
            rows = np.concatenate([np.arange(s, min(s + self.block, self.n)) for s in g])
            perm = np.random.default_rng([self.seed, int(epoch), int(g[0])]).permutation(
                len(rows))
            yield rows, [np.sort(perm[b:b + self.batch])
                         for b in range(0, len(rows) - self.batch + 1, self.batch)]

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The positions of each minibatch of this rank in epoch ``epoch`` (sorted)."""
        for rows, parts in self.epoch(epoch):
            for p in parts:
                yield rows[p]


class Prefetcher:
    """Reads and densifies minibatches in a background thread, ``depth`` ahead of the trainer.

    ``make(item)`` turns one item of ``items`` into a numpy array; with ``pin`` (CUDA) the
    tensor is put in pinned memory so the copy to the GPU can overlap. Iterate to get torch
    tensors; :meth:`close` stops the thread."""

    def __init__(self, items: Iterator, make, *, depth: int = 4, pin: bool = False) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._items, self._make, self._pin = items, make, pin
        self._t = threading.Thread(target=self._run, daemon=True, name="perturb-prefetch")
        self._t.start()

    def _run(self) -> None:
        import torch

        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                x = torch.from_numpy(self._make(item))
                if self._pin:
                    x = x.pin_memory()
                while not self._stop.is_set():
                    try:
                        self._q.put((x, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            self._q.put((None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
            self._q.put((None, e))

    def __iter__(self):
        while True:
            x, err = self._q.get()
            if err is not None:
                raise err
            if x is None:
                return
            yield x

    def close(self) -> None:
        self._stop.set()
        while True:                       # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._t.join(timeout=5)


__all__ = ["BACKED_FROM_BYTES", "BLOCK_ROWS", "POOL_BLOCKS", "BackedDataset", "BlockShuffler",
           "H5adCounts", "OpenedDataset", "VIEW_SAMPLE_CELLS", "open_dataset",
           "estimate_in_memory_bytes", "should_stream", "Prefetcher",
           "ScanStats", "hvg_seurat", "scan"]
