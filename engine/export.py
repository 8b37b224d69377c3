"""Writing results to disk atomically: h5ad and CSV.

Both writers write to a hidden temporary file in the destination folder and rename it onto the
destination (``os.replace``) only when writing finished. If anything goes wrong, including
``KeyboardInterrupt`` or cancellation, the temporary file is removed and an existing file at the
destination is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import DataError, ResourceError
from .progress import CancelToken, ProgressFn, Reporter, check_cancel

if TYPE_CHECKING:
    from anndata import AnnData

#: Condition columns written first in CSV files, in this order, when present in ``obs``.
CONDITION_COLUMNS = ("condition", "cell_type", "perturbation", "perturbation_type", "dose")
_CSV_CHUNK_VALUES = 4_000_000  # dense values per CSV chunk (~16 MB float32)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On any exception (``KeyboardInterrupt`` included) the temporary file is deleted and ``path``
    is not created or changed. ``OSError`` is re-raised as :class:`DataError` (or
    :class:`ResourceError` when the disk is full), naming ``path``.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DataError(f"{path}: the folder {folder} does not exist")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    except OSError as e:
        raise DataError(f"{path}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            if e.errno == errno.ENOSPC:
                raise ResourceError(f"{path}: the disk is full; nothing was written") from None
            raise DataError(f"{path}: cannot write the file ({e.strerror or e}); nothing was "
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


def write_h5ad(adata: AnnData, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write ``adata`` to an h5ad file atomically.

    ``uns`` is written through :func:`sanitize_uns`: ``None`` values in dicts are dropped, lists
    of dicts or mixed lists are stored as ``"json:..."`` strings (decode with
    :func:`restore_uns`), tuples become lists. ``adata`` itself is not modified, apart from
    anndata turning string ``obs`` columns into categoricals (its ``uns`` is swapped for the
    sanitised copy while writing, so do not edit ``adata`` from another thread meanwhile).

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
        The disk is full.
    """
    path = Path(path)
    original = adata.uns
    with atomic_path(path, suffix=".tmp.h5ad") as tmp:
        try:
            adata.uns = sanitize_uns(dict(original))
            adata.write_h5ad(tmp, compression=compression)
        except (OSError, KeyboardInterrupt):
            raise
        except Exception as e:
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
            meta = adata.obs.iloc[start:stop][cols].reset_index(drop=True)
            chunk = pd.concat([meta, values], axis=1, copy=False)
            chunk.index = pd.Index(adata.obs_names[start:stop], name="cell")
            chunk.to_csv(f, sep=sep, header=start == 0, float_format=float_format,
                         lineterminator="\n")
            report(stop)
    return path
