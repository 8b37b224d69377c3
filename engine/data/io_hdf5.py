"""Checks on an HDF5 file (h5ad or 10x .h5) made before any of its data is read.

An HDF5 header can declare a dataset of any size: a 30 KB file can claim a billion cells in
datasets that hold no data (read back as fill values) or in a shape attribute that does not match
its arrays, and reading it allocates tens or hundreds of GiB before anything fails. Only shapes,
types, attributes, storage sizes and the first and last entry of each ``indptr`` are read here:

- every dataset must store what it declares: contiguous data inside the file, chunked data no
  more compressed than the filters allow (deflate tops out near 1032:1); no data outside the
  file (external or virtual storage);
- the memory needed to read every dataset must be available;
- matrices must agree with ``obs`` / ``var`` and, when sparse, with their own index arrays.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import DataError
from .io_common import MAX_DEFLATE_RATIO, check_memory, fmt_bytes

#: Filters whose best ratio is bounded by deflate's (or is no compression at all).
_DEFLATE_LIKE = {1, 2, 3, 4, 32000}  # deflate, shuffle, fletcher32, szip, lzf
#: Other filters (blosc, zstd, lz4, bitshuffle, scale-offset, ...) may compress runs of zeros far
#: better; allow them this much before calling the file implausible.
_OTHER_RATIO = 100_000
_SLACK = 1 << 20        # datasets below this size are never called implausible
_VLEN_FILE_BYTES = 16   # one variable-length element in the file (length + heap address)
_VLEN_MEM_BYTES = 64    # ... and as a Python string in memory
_SPARSE = ("csr_matrix", "csc_matrix")
_PROBE_TIMEOUT = 60  # seconds; a header walk of a healthy file takes well under one

#: Runs in a child process: for each path read from stdin, touch every attribute and object
#: header (and read small datasets), the parts of a file where a corrupt byte can crash the HDF5
#: C library instead of raising; answer one line.
_PROBE = r"""
import json
import sys

import h5py

def touch(name, obj):
    for k in obj.attrs:
        obj.attrs[k]
    if isinstance(obj, h5py.Dataset):
        obj.id.get_create_plist()
        obj.id.get_storage_size()
        if obj.size * obj.dtype.itemsize <= 65536:
            obj[()]

print("ready", flush=True)
for line in sys.stdin:
    try:
        with h5py.File(json.loads(line), "r") as f:
            touch("/", f)
            f.visititems(touch)
        answer = "ok"
    except Exception:
        answer = "error"
    print(answer, flush=True)
"""


class _Prober:
    """One long-lived child process that reads HDF5 headers first (restarted after a crash)."""

    def __init__(self):
        self.proc = None
        self.lock = threading.Lock()
        self.answers: queue.Queue = queue.Queue()

    def _start(self) -> bool:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _PROBE], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError:
            self.proc = None
            return False
        self.answers = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self.answers), daemon=True).start()
        return self._answer() == "ready"

    @staticmethod
    def _pump(proc, answers) -> None:
        for line in proc.stdout:
            answers.put(line.strip())
        answers.put(None)  # the child ended

    def _answer(self) -> str | None:
        try:
            return self.answers.get(timeout=_PROBE_TIMEOUT)
        except queue.Empty:
            return "timeout"

    def _stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            return None

    def probe(self, path: Path) -> None:
        with self.lock:
            if (self.proc is None or self.proc.poll() is not None) and not self._start():
                self._stop()
                return  # no child (no interpreter, h5py not importable): skip the probe
            try:
                self.proc.stdin.write(json.dumps(str(path)) + "\n")
                self.proc.stdin.flush()
            except OSError:
                self._stop()
                return
            answer = self._answer()
            if answer in ("ok", "error"):
                return  # "error": reading here raises it as a DataError with the details
            rc = self._stop()
        if answer == "timeout":
            raise DataError(f"{path}: reading the structure of this HDF5 file did not finish "
                            f"in {_PROBE_TIMEOUT} s; the file is corrupt")
        raise DataError(f"{path}: reading the structure of this HDF5 file crashes the HDF5 "
                        f"library (exit {rc}); the file is corrupt")


_PROBER = _Prober()


def probe_in_child(path: Path) -> None:
    """Read the file's headers in a child process first: a corrupt byte that crashes (or hangs)
    the HDF5 library then becomes a :class:`DataError` instead of killing this process. Skipped in
    a frozen app (its executable is not a Python interpreter) and when no child can start."""
    if getattr(sys, "frozen", False) or not sys.executable:
        return
    _PROBER.probe(path)


def _attr(obj, name, default=None):
    try:
        v = obj.attrs.get(name, default)
    except Exception:  # unreadable attribute: treat as absent, reading will say more
        return default
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _n_elems(ds) -> int:
    n = 1
    for s in ds.shape or ():
        n *= int(s)
    return n if ds.shape is not None else 0


def _is_vlen(ds) -> bool:
    import h5py

    dt = ds.dtype
    return dt.kind == "O" or (h5py.check_string_dtype(dt) is not None
                              and h5py.check_string_dtype(dt).length is None)


def check_datasets(f, path: Path) -> int:
    """Check every dataset's storage against what it declares; return the bytes needed in memory.

    Raises :class:`DataError` for data outside the file, beyond its end, or implausibly
    compressed."""
    from h5py import h5d

    file_size = path.stat().st_size
    found: list = []

    def visit(name, obj):
        if hasattr(obj, "dtype") and hasattr(obj, "shape"):
            found.append((name, obj))

    try:
        f.visititems(visit)
    except Exception as e:
        raise DataError(f"{path}: cannot list the contents of this HDF5 file; it may be "
                        f"truncated or corrupt ({type(e).__name__})") from None
    need = 0
    for name, ds in found:
        try:
            n = _n_elems(ds)
            vlen = _is_vlen(ds)
            size = ds.id.get_type().get_size()
            plist = ds.id.get_create_plist()
            layout = plist.get_layout()
            storage = int(ds.id.get_storage_size())
            external = plist.get_external_count() if layout == h5d.CONTIGUOUS else 0
            filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())} \
                if layout == h5d.CHUNKED else set()
            offset = ds.id.get_offset() if layout == h5d.CONTIGUOUS else None
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: dataset {name!r} has an unreadable header; the file may be "
                            f"truncated or corrupt ({type(e).__name__})") from None
        declared = n * (max(size, _VLEN_FILE_BYTES) if vlen else size)
        item = _VLEN_MEM_BYTES if vlen else (ds.dtype.itemsize * (5 if ds.dtype.kind == "S"
                                                                  else 1))
        need += n * item
        where = f"{path}: dataset {name!r}"
        if external:
            raise DataError(f"{where} keeps its data in another file; Perturb Studio reads only "
                            "self-contained files")
        if layout == h5d.VIRTUAL:
            raise DataError(f"{where} is a virtual dataset (its data lives in other files); "
                            "Perturb Studio reads only self-contained files")
        if declared <= _SLACK:
            continue
        if layout == h5d.CONTIGUOUS:
            if offset is None or storage < declared:
                raise DataError(f"{where} declares {fmt_bytes(declared)} ({n:,} values) but "
                                "holds no data; the file is corrupt or was not written by "
                                "anndata / Cell Ranger")
            if offset + declared > file_size:
                raise DataError(f"{where} ends at byte {offset + declared:,} but the file has "
                                f"only {file_size:,} bytes; it may be truncated or corrupt")
        elif layout == h5d.CHUNKED:
            ratio = MAX_DEFLATE_RATIO if filters <= _DEFLATE_LIKE else _OTHER_RATIO
            if storage > file_size:
                raise DataError(f"{where} claims {storage:,} stored bytes but the file has only "
                                f"{file_size:,}; it may be truncated or corrupt")
            if declared > ratio * max(storage, 1):
                raise DataError(f"{where} declares {fmt_bytes(declared)} ({n:,} values) but "
                                f"stores only {fmt_bytes(storage)} of data, more than any "
                                "compression allows; the file is corrupt or forged")
    return need


def _index_len(f, key: str, path: Path) -> int | None:
    """Number of rows of the ``obs`` / ``var`` dataframe stored at ``key`` (None if unknown)."""
    if key not in f:
        return None
    g = f[key]
    if hasattr(g, "shape"):  # legacy compound dataset
        return int(g.shape[0]) if g.shape else None
    index = _attr(g, "_index")
    if not isinstance(index, str) or index not in g or not hasattr(g[index], "shape"):
        return None
    shape = g[index].shape
    if not shape or len(shape) != 1:
        raise DataError(f"{path}: {key}/{index} (the {key} names) is not a 1-D array")
    n = int(shape[0])
    for col in g:
        node = g[col]
        if hasattr(node, "shape"):
            m = int(node.shape[0]) if node.shape else None
        elif _attr(node, "encoding-type") == "categorical" and "codes" in node:
            m = int(node["codes"].shape[0]) if node["codes"].shape else None
        elif str(_attr(node, "encoding-type", "")).startswith("nullable") and "values" in node:
            m = int(node["values"].shape[0]) if node["values"].shape else None
        else:
            continue
        if m is not None and m != n:
            raise DataError(f"{path}: column {key}/{col} has {m:,} values but {key} has "
                            f"{n:,} rows; the file is corrupt")
    return n


def _ints(v, k: int) -> tuple[int, ...] | None:
    try:
        t = tuple(int(x) for x in v)
    except (TypeError, ValueError, OverflowError):
        return None
    return t if len(t) == k and all(x >= 0 for x in t) else None


def check_sparse_group(g, name: str, path: Path, shape: tuple[int, int], fmt: str) -> None:
    """A CSR / CSC matrix stored as ``data``, ``indices``, ``indptr`` must agree with ``shape``."""
    where = f"{path}: {name}"
    for part in ("data", "indices", "indptr"):
        if part not in g or not hasattr(g[part], "shape") or len(g[part].shape or ()) != 1:
            raise DataError(f"{where} is a sparse matrix without a 1-D {part!r} array; the file "
                            "is corrupt")
    major = shape[0] if fmt == "csr" else shape[1]
    indptr, n_ind, n_data = g["indptr"], g["indices"].shape[0], g["data"].shape[0]
    if indptr.shape[0] != major + 1:
        raise DataError(f"{where}: a {shape[0]:,} x {shape[1]:,} {fmt.upper()} matrix needs "
                        f"{major + 1:,} entries in indptr but the file has {indptr.shape[0]:,}; "
                        "the file is corrupt")
    if n_ind != n_data:
        raise DataError(f"{where}: {n_ind:,} indices but {n_data:,} values; the file is corrupt")
    try:
        first, last = int(indptr[0]), int(indptr[-1])
    except Exception as e:
        raise DataError(f"{where}: cannot read indptr ({type(e).__name__}); the file may be "
                        "truncated or corrupt") from None
    if first != 0 or last != n_data:
        raise DataError(f"{where}: indptr runs from {first:,} to {last:,} but there are "
                        f"{n_data:,} stored values; the file is corrupt")


def _check_matrix(f, key: str, path: Path, rows: int | None, cols: int | None,
                  need_2d: bool = True) -> None:
    node = f[key]
    enc = _attr(node, "encoding-type") or _attr(node, "h5sparse_format")
    if hasattr(node, "shape"):
        shape = node.shape or ()
        if len(shape) != 2:
            if need_2d:
                raise DataError(f"{path}: {key} is a {len(shape)}-D array; a cells x genes "
                                "matrix must be 2-D")
            return
    elif enc in _SPARSE or enc in ("csr", "csc"):
        fmt = "csr" if enc in ("csr_matrix", "csr") else "csc"
        shape = _ints(_attr(node, "shape", ()), 2)
        if shape is None:
            raise DataError(f"{path}: {key} is a sparse matrix without a valid shape (two "
                            "numbers >= 0); the file is corrupt")
        check_sparse_group(node, key, path, shape, fmt)
    else:
        return
    for got, want, what in ((shape[0], rows, "rows"), (shape[1], cols, "columns")):
        if want is not None and got != want:
            raise DataError(f"{path}: {key} has {got:,} {what} but the file lists {want:,} "
                            f"{'cells' if what == 'rows' else 'genes'} for it; the file is "
                            "corrupt")


def check_h5ad(f, path: Path) -> None:
    """Check an open h5ad file before anndata reads it (see the module docstring)."""
    need = check_datasets(f, path)
    n_obs, n_vars = _index_len(f, "obs", path), _index_len(f, "var", path)
    try:
        if "X" in f:
            _check_matrix(f, "X", path, n_obs, n_vars)
        for group, rows, cols, two_d in (("layers", n_obs, n_vars, True),
                                         ("obsm", n_obs, None, False),
                                         ("varm", n_vars, None, False),
                                         ("obsp", n_obs, n_obs, True),
                                         ("varp", n_vars, n_vars, True)):
            if group in f and not hasattr(f[group], "shape"):
                for k in f[group]:
                    _check_matrix(f, f"{group}/{k}", path, rows, cols, two_d)
        if "raw" in f and not hasattr(f["raw"], "shape") and "X" in f["raw"]:
            _check_matrix(f, "raw/X", path, n_obs, _index_len(f["raw"], "var", path))
    except DataError:
        raise
    except Exception as e:  # a header h5py cannot parse
        raise DataError(f"{path}: cannot read the layout of this h5ad file; it may be truncated "
                        f"or corrupt ({type(e).__name__})") from None
    check_memory(path, 1.5 * need, "this file")


def check_10x_h5(f, path: Path) -> None:
    """Check an open 10x Genomics .h5 file (v3 ``matrix`` group or v2 genome groups)."""
    need = check_datasets(f, path)
    groups = ["matrix"] if "matrix" in f else [k for k in f if not hasattr(f[k], "shape")]
    for key in groups:
        g = f[key]
        if "shape" not in g or not hasattr(g["shape"], "shape") or g["shape"].size != 2:
            continue  # not a matrix group: the 10x reader says what is missing
        shape = _ints(g["shape"][()], 2)
        if shape is None:
            raise DataError(f"{path}: {key}/shape is not two numbers >= 0; the file is corrupt")
        n_genes, n_cells = shape
        check_sparse_group(g, key, path, (n_genes, n_cells), "csc")
        for sub, n, what in (("barcodes", n_cells, "cells"), ("features/id", n_genes, "genes"),
                             ("features/name", n_genes, "genes"), ("genes", n_genes, "genes"),
                             ("gene_names", n_genes, "genes")):
            if sub in g and hasattr(g[sub], "shape"):
                m = int(g[sub].shape[0]) if g[sub].shape else 0
                if m != n:
                    raise DataError(f"{path}: {key}/{sub} lists {m:,} entries but the matrix "
                                    f"has {n:,} {what}; the file is corrupt")
    check_memory(path, 2.0 * need, "this file")
