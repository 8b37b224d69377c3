"""Writing results to disk atomically: h5ad and CSV.

Both writers write to a hidden temporary file in the destination folder and rename it onto the
destination (``os.replace``) only when writing finished. If anything goes wrong, including
``KeyboardInterrupt``, SIGTERM / SIGHUP (in the main thread) or cancellation, the temporary file
is removed and an existing file at the destination is left untouched. Temporary files are named
``.NAME.<host>-<pid>-<random>.tmp[.h5ad]``; one left behind by a killed process (SIGKILL, power
loss) is removed at the next write of NAME in that folder.

Before writing, the free space of the folder is checked against an estimate of the file's size
(for h5ad an upper bound: HDF5 cannot recover from a disk that fills up in the middle of a
write, it crashes the process).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import Cancelled, DataError, ResourceError
from .memory import (  # noqa: F401  (sizes on disk live in memory.py; re-exported here)
    CSV_CHUNK_VALUES,
    estimate_csv_bytes,
    estimate_h5ad_bytes,
    estimate_output_bytes,
)
from .progress import CancelToken, ProgressFn, Reporter, check_cancel

if TYPE_CHECKING:
    from anndata import AnnData

#: Condition columns written first in CSV files, in this order, when present in ``obs``.
CONDITION_COLUMNS = ("condition", "cell_type", "perturbation", "perturbation_type", "dose")
#: Output names the writers support (``write_h5ad`` for .h5ad, ``write_csv`` for the others).
OUTPUT_SUFFIXES = (".h5ad", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
_CSV_CHUNK_VALUES = CSV_CHUNK_VALUES  # dense values per CSV chunk (~16 MB float32)
#: A temporary file of ours from another host, or of the old naming, is stale after this long
#: without being modified; one whose process (on this host) is still alive after this long.
STALE_FOREIGN_S = 3600.0
STALE_ALIVE_S = 24 * 3600.0


# -- free space and destinations ------------------------------------------------------------


def _size(n: float) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} bytes"


def _existing_ancestor(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_free_space(folder: str | Path, need_bytes: int, what: str) -> None:
    """Raise :class:`ResourceError` if ``folder`` (or, while it does not exist yet, its nearest
    existing parent) has less than ``need_bytes`` free. ``what`` starts the message, e.g.
    ``"writing /data/cells.h5ad"``. A folder whose free space cannot be read passes."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(_existing_ancestor(folder)).free
    except OSError:
        return
    if int(need_bytes) > free:
        raise ResourceError(f"{what} needs about {_size(need_bytes)} of free space in {folder}, "
                            f"but only {_size(free)} is free; free some space or choose "
                            "another folder")


def _supported(path: Path) -> bool:
    return path.name.lower().endswith(OUTPUT_SUFFIXES)


def preflight_output(path: str | os.PathLike, *, need_bytes: int | None = None) -> Path:
    """Check, before any work, that results can be written to ``path``; return it as a Path.

    Checks that the name ends in a supported suffix (:data:`OUTPUT_SUFFIXES`), that ``path`` is
    not a folder, that its folder exists or can be created (missing folders are created) and is
    a folder, that a file can be created there (a temporary file, removed at once) and, with
    ``need_bytes``, that enough space is free.

    Raises
    ------
    DataError
        Unsupported suffix, ``path`` is a folder, a parent is a file, or the folder cannot be
        created or written (naming it and why).
    ResourceError
        Less than ``need_bytes`` free.
    """
    path = Path(path)
    if not _supported(path):
        raise DataError(f"{path}: the output file must end in {', '.join(OUTPUT_SUFFIXES)} "
                        f"(got {path.name!r})")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        if path.is_dir():
            raise DataError(f"{path}: is a folder; give a file name")
        p = _existing_ancestor(folder)
        if p.exists() and not p.is_dir():
            raise DataError(f"{path}: {p} is a file, not a folder")
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path}: cannot create or use the folder {folder} "
                        f"({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=folder)
    except OSError as e:
        raise DataError(f"{path}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if need_bytes is not None:
        check_free_space(folder, need_bytes, f"writing {path}")
    return path


# -- temporary files ----------------------------------------------------------------------------


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _tmp_prefix(name: str) -> str:
    return f".{name}.{_host_tag()}-{os.getpid()}-"


def _tmp_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.(?:(?P<host>[0-9a-f]{{6}})-(?P<pid>\d+)-)?"
                      r"[a-z0-9_]{8}\.tmp(?:\.h5ad)?")


def _pid_alive(pid: int) -> bool | None:
    """True / False on POSIX; None where it cannot be asked safely (Windows)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sweep_stale_temp_files(folder: str | Path, name: str) -> list[Path]:
    """Remove temporary files that :func:`atomic_path` left for destination ``name`` in
    ``folder`` (a killed writer): regular files of ours, matching our naming pattern, whose
    process on this host is gone, or not modified for :data:`STALE_FOREIGN_S` (another host,
    old naming) / :data:`STALE_ALIVE_S` (a live process of that number). Nothing else is
    touched. Returns what was removed."""
    folder, pattern, host, removed = Path(folder), _tmp_pattern(name), _host_tag(), []
    prefix, now = f".{name}.", time.time()
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            continue
        age = now - st.st_mtime
        if m["pid"] is not None and m["host"] == host:
            pid = int(m["pid"])
            if pid == os.getpid():
                continue                                  # another write of this process
            alive = _pid_alive(pid)
            if alive is False:
                stale = True
            elif alive is None:
                stale = age > STALE_FOREIGN_S
            else:
                stale = age > STALE_ALIVE_S
        else:
            stale = age > STALE_FOREIGN_S
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


class _Signalled(BaseException):
    """SIGTERM / SIGHUP arrived during a write (a BaseException: no ``except Exception`` in a
    library swallows it, so the temporary file is removed on the way out)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame) -> None:
    raise _Signalled(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """In the main thread, turn SIGTERM and SIGHUP into :class:`_Signalled` for the block, then
    restore the handlers that were there. Ignored signals stay ignored (``nohup``)."""
    installed: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                prev = signal.getsignal(sig)
                if prev is signal.SIG_IGN or prev is None:
                    continue
                signal.signal(sig, _raise_signalled)
                installed[sig] = prev
            except (ValueError, OSError):
                pass
    try:
        yield
    finally:
        for sig, prev in installed.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, prev)


def _is_disk_full(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        text = str(e)
        if "No space left on device" in text or "errno = 28" in text or "quota exceeded" in text:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On any exception (``KeyboardInterrupt`` included) the temporary file is deleted and ``path``
    is not created or changed. SIGTERM / SIGHUP during the block (main thread only) do the same
    and are then passed on to the handler that was installed before (by default: the process
    ends as it would have). ``OSError`` is re-raised as :class:`DataError` (or
    :class:`ResourceError` when the disk is full), naming ``path``. Stale temporary files of
    earlier writes of ``path`` are removed first (:func:`sweep_stale_temp_files`).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists():
            raise DataError(f"{path}: {folder} is a file, not a folder")
        raise DataError(f"{path}: the folder {folder} does not exist")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a file name")
    sweep_stale_temp_files(folder, path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=suffix,
                                        dir=folder)
    except OSError as e:
        raise DataError(f"{path}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _signals_raise():
            yield tmp
            os.chmod(tmp, _file_mode(path))
            os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, _Signalled):
            name = signal.Signals(e.signum).name
            signal.raise_signal(e.signum)      # the previous handler; by default: exit
            raise Cancelled(f"{path}: stopped by {name}; nothing was written") from None
        if _is_disk_full(e):
            try:
                free = f" ({_size(shutil.disk_usage(folder).free)} free in {folder})"
            except OSError:
                free = ""
            raise ResourceError(f"{path}: the disk is full{free}; nothing was written") \
                from None
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write the file ({e.strerror or e}); nothing was "
                            "written") from None
        if isinstance(e, MemoryError):
            raise ResourceError(f"{path}: ran out of memory while writing; nothing was "
                                "written") from None
        raise


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


# -- h5ad -------------------------------------------------------------------------------------


def sanitize_uns(value: Any) -> Any:
    """Make a nested ``uns`` value storable in h5ad.

    Dicts stay dicts (keys become strings) and entries whose value is ``None`` are dropped
    (h5ad cannot store ``None``; ``d.get(key)`` still gives ``None`` after a round trip).
    Tuples become lists. Lists of plain numbers, of strings or of booleans stay lists (they come
    back as numpy arrays). Other lists (of dicts, of lists, mixed, or holding ``None``) are stored
    as a JSON string; :func:`restore_uns` turns them back. Paths become strings; numpy values are
    kept; other objects become ``str(obj)``.
    """
    if isinstance(value, Mapping):
        return {str(k): sanitize_uns(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        items = list(value)
        if items and _homogeneous_scalars(items):
            return items
        if not items:
            return np.array([], dtype=np.float64)
        return _JSON_PREFIX + json.dumps(_jsonable(items))
    if value is None:
        return ""
    if isinstance(value, str) and type(value) is not str:     # e.g. torch.__version__
        return str(value)
    if isinstance(value, str | bool | int | float | np.generic | np.ndarray | pd.DataFrame):
        return value
    if sp.issparse(value):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


_JSON_PREFIX = "json:"


def _homogeneous_scalars(items: list) -> bool:
    if all(isinstance(v, str) for v in items):
        return True
    if all(isinstance(v, bool | np.bool_) for v in items):
        return True
    return all(isinstance(v, int | float | np.integer | np.floating)
               and not isinstance(v, bool | np.bool_) for v in items)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, str | bool | int | float):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)


def restore_uns(value: Any) -> Any:
    """Undo :func:`sanitize_uns` where it stored JSON: nested dicts are walked, ``json:``
    strings are decoded, numpy arrays are left as they are."""
    if isinstance(value, Mapping):
        return {k: restore_uns(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(_JSON_PREFIX):
        try:
            return json.loads(value[len(_JSON_PREFIX):])
        except ValueError:
            return value
    return value


_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = 0
_PREV_HOOK = None


def _drop_h5py_noise(unraisable) -> None:
    obj = f"{unraisable.object!r} {unraisable.exc_type}"
    if "h5py" in obj or "ObjectID" in obj:
        return
    (_PREV_HOOK or sys.__unraisablehook__)(unraisable)


@contextlib.contextmanager
def _quiet_h5py() -> Iterator[None]:
    """Drop the "Exception ignored in ObjectID.__dealloc__" lines h5py prints after a failed
    write (HDF5's own error stacks are silenced by h5py already)."""
    global _QUIET_DEPTH, _PREV_HOOK
    with _QUIET_LOCK:
        if _QUIET_DEPTH == 0:
            _PREV_HOOK, sys.unraisablehook = sys.unraisablehook, _drop_h5py_noise
        _QUIET_DEPTH += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH -= 1
            if _QUIET_DEPTH == 0:
                sys.unraisablehook, _PREV_HOOK = _PREV_HOOK or sys.__unraisablehook__, None


def write_h5ad(adata: AnnData, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write ``adata`` to an h5ad file atomically.

    ``uns`` is written through :func:`sanitize_uns`: ``None`` values in dicts are dropped, lists
    of dicts or mixed lists are stored as ``"json:..."`` strings (decode with
    :func:`restore_uns`), tuples become lists. ``adata`` itself is not modified, apart from
    anndata turning string ``obs`` columns into categoricals (its ``uns`` is swapped for the
    sanitised copy while writing, so do not edit ``adata`` from another thread meanwhile).

    Before anything is written, the folder's free space is checked against
    :func:`estimate_h5ad_bytes` (the uncompressed size: an upper bound). HDF5 cannot recover
    from a disk that fills up in the middle of a write (it crashes the process, issue 15 #9), so
    this check is what keeps it from happening; only another program filling the disk during
    the write can still get there.

    Parameters
    ----------
    adata
        What to write.
    path
        The destination file; its folder must exist. An existing file is replaced only once the
        new one is complete.
    compression
        h5py compression of the matrices (``"gzip"``, ``"lzf"`` or None).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    DataError
        The folder is missing or not writable, or the data cannot be stored (naming the file).
    ResourceError
        Not enough free space (before writing: naming the sizes), the disk filled up, or memory
        ran out.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    original = adata.uns
    if folder.is_dir() and not path.is_dir():
        adata.uns = sanitize_uns(dict(original))
        try:
            need = estimate_h5ad_bytes(adata)
        finally:
            adata.uns = original
        check_free_space(folder, need, f"writing {path} (an upper bound: before compression)")
    with atomic_path(path, suffix=".tmp.h5ad") as tmp, _quiet_h5py():
        try:
            adata.uns = sanitize_uns(dict(original))
            adata.write_h5ad(tmp, compression=compression)
        except (OSError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:
            if _is_disk_full(e):
                raise OSError(errno.ENOSPC, "No space left on device") from None
            raise DataError(f"{path}: cannot store this dataset as h5ad "
                            f"({type(e).__name__}: {str(e)[:300]}); nothing was written") \
                from None
        finally:
            adata.uns = original
    return path


# -- CSV --------------------------------------------------------------------------------------


def _matrix(adata: AnnData, layer: str):
    if layer == "X":
        if adata.X is None:
            raise DataError("this dataset has no X matrix to export")
        return adata.X
    if layer not in adata.layers:
        have = ", ".join(["X", *adata.layers.keys()])
        raise DataError(f"layer {layer!r} is not in this dataset; available: {have}")
    return adata.layers[layer]


def _obs_columns(obs: pd.DataFrame) -> list[str]:
    first = [c for c in CONDITION_COLUMNS if c in obs.columns]
    return first + [c for c in obs.columns if c not in first]


def _is_integer_matrix(m) -> bool:
    dtype = getattr(m, "dtype", np.dtype(np.float64))
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        return True
    data = m.data if sp.issparse(m) else np.asarray(m)
    data = np.asarray(data).ravel()[:1_000_000]
    return bool(np.all(np.isfinite(data)) and np.all(data == np.round(data)))


def _plain_dose(meta: pd.DataFrame) -> pd.DataFrame:
    """An empty ``dose`` where no part of the condition has a dose: a combination without doses
    reads ``+`` (one empty dose per part) in the generated ``obs``, which means nothing in a
    table."""
    if "dose" not in meta.columns:
        return meta
    d = meta["dose"].astype(str)
    blank = d.str.fullmatch(r"[+\s]*") | d.isin(["nan", "None"])
    if blank.any():
        meta = meta.copy()
        meta["dose"] = d.where(~blank, "")
    return meta


def write_csv(adata: AnnData, path: str | Path, *, layer: str = "counts",
              float_format: str = "%.6g", progress: ProgressFn | None = None,
              cancel: CancelToken | None = None) -> Path:
    """Write one row per cell to a CSV (or ``.tsv``; ``.gz`` compresses) file, atomically.

    Columns: the cell name (header ``cell``), then the ``obs`` columns with the condition
    columns first (``condition``, ``cell_type``, ``perturbation``, ``perturbation_type``,
    ``dose``, then the others in ``obs`` order: context levels, ``is_control``, ...), then one
    column per gene. Rows are written in chunks, so a large sparse matrix is never made dense
    at once. Integer-valued matrices are written without decimals.

    Parameters
    ----------
    adata
        What to write.
    path
        The destination file; its folder must exist.
    layer
        ``"counts"`` (raw counts, the default), another layer name, or ``"X"`` (the
        normalised values of generated data).
    float_format
        printf format of non-integer values.
    progress, cancel
        Optional progress callback (phase ``"writing"``, done/total in cells) and cancel token
        (raises :class:`engine.errors.Cancelled`; nothing is written).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    DataError
        The layer is missing, or the file cannot be written (naming it).
    ResourceError
        The disk is full.
    """
    path = Path(path)
    m = _matrix(adata, layer)
    if hasattr(m, "to_memory"):
        m = m.to_memory()
    n, g = adata.n_obs, adata.n_vars
    as_int = _is_integer_matrix(m)
    sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")) else ","
    cols = _obs_columns(adata.obs)
    genes = [str(v) for v in adata.var_names]
    step = max(1, _CSV_CHUNK_VALUES // max(g, 1))
    report = Reporter(progress, n, "writing")
    gz = path.name.lower().endswith(".gz")
    folder = path.parent if str(path.parent) else Path(".")
    if folder.is_dir() and not path.is_dir():
        need = estimate_csv_bytes(adata, m, as_int, cols)
        if gz:       # the compressed size is not known before: refuse only hopeless cases
            need //= 20
        check_free_space(folder, need, f"writing {path}")
    with atomic_path(path, suffix=".tmp") as tmp, \
            (gzip.open(tmp, "wt", encoding="utf-8", newline="", compresslevel=4) if gz
             else open(tmp, "w", encoding="utf-8", newline="")) as f:
        for start in range(0, max(n, 1), step):
            check_cancel(cancel)
            stop = min(start + step, n)
            block = m[start:stop]
            dense = block.toarray() if sp.issparse(block) else np.asarray(block)
            if as_int:
                dense = dense.astype(np.int64)
            values = pd.DataFrame(dense, columns=genes, copy=False)
            meta = _plain_dose(adata.obs.iloc[start:stop][cols].reset_index(drop=True))
            chunk = pd.concat([meta, values], axis=1, copy=False)
            chunk.index = pd.Index(adata.obs_names[start:stop], name="cell")
            chunk.to_csv(f, sep=sep, header=start == 0, float_format=float_format,
                         lineterminator="\n")
            report(stop)
    return path
