"""Reading single-cell data files into AnnData, finding raw counts, and summarising a dataset.

Supported inputs (chosen by file name):

- ``.h5ad``: AnnData files.
- ``.csv`` / ``.tsv`` / ``.txt`` (optionally ``.gz``): a table with one row per cell. The first
  column holds the cell names (unless it is numeric and its header is not empty or cell-like, in
  which case the cells are numbered). Columns holding text or booleans become ``obs``; so do
  numeric columns with a well-known metadata name (``dose``, ``batch``, ... see
  :data:`NUMERIC_METADATA`) or prefix (``n_``, ``pct_``, ``is_``, ``dose``, ... see
  :data:`NUMERIC_METADATA_PREFIX`). Every other column is a gene. A second table of per-cell metadata
  can be given with ``metadata=`` (indexed by cell name in its first column).
  A table is read as *genes x cells* (and transposed) when all its data columns are numeric and
  either its first header cell is a gene word (``gene``, ``gene_id``, ``symbol``, ...) or most
  of its column headers look like cell barcodes (8 or more ``ACGT`` letters, optionally followed
  by ``-1``).
- ``.h5``: 10x Genomics HDF5 (Cell Ranger v2 or v3 layout), gene-expression features only.
- a 10x folder holding ``matrix.mtx[.gz]``, ``features.tsv[.gz]`` (v3) or ``genes.tsv[.gz]``
  (v2) and ``barcodes.tsv[.gz]``, or the ``.mtx[.gz]`` file itself (file names may share a
  prefix such as ``GSM123_``). Only ``Gene Expression`` features are kept when a feature-type
  column exists.

Gene symbols become ``var_names`` (made unique); Ensembl IDs are kept in ``var['gene_ids']``.
Every failure raises :class:`engine.errors.DataError` with a message naming the file.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import DataError, PerturbStudioError, ResourceError
from ..progress import ProgressFn, Reporter
from .io_10x import MTX_SUFFIXES, read_10x_h5, read_mtx
from .io_common import available_memory, fmt_bytes
from .io_common import check_unique_cells as _check_unique_cells
from .io_common import short as _short
from .io_counts import find_counts, get_counts
from .io_hdf5 import check_h5ad, probe_in_child
from .io_table import (
    NUMERIC_METADATA,
    NUMERIC_METADATA_PREFIX,
    TABLE_SUFFIXES,
    labels_to_categorical,
    looks_numeric,
    read_table,
    sniff_sep,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["NUMERIC_METADATA", "NUMERIC_METADATA_PREFIX", "ColumnSummary", "DatasetSummary",
           "get_counts", "read_dataset", "summarize_dataset"]

_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names",
                   "symbol", "symbols", "gene", "genes", "name", "feature_names")
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(?:\.\d+)?$")


# -- reading ----------------------------------------------------------------------------------


def read_dataset(path: str | Path, *, metadata: str | Path | None = None,
                 progress: ProgressFn | None = None) -> AnnData:
    """Read a single-cell dataset from h5ad, CSV/TSV, 10x HDF5 or a 10x mtx folder.

    Parameters
    ----------
    path
        The data file, or a 10x folder holding ``matrix.mtx[.gz]``. The format is chosen by the
        file name (see the module docstring for the rules).
    metadata
        Optional CSV/TSV of per-cell metadata, first column the cell names. Its columns are added
        to ``obs`` (replacing columns of the same name); every cell must have a row.
    progress
        Called with :class:`engine.progress.Progress` records (phase ``"reading"``).

    Returns
    -------
    AnnData
        Cells x genes, gene symbols as unique ``var_names``, text labels as categorical ``obs``.

    Raises
    ------
    DataError
        The file is missing, empty, of an unsupported type, corrupt or truncated, has duplicate
        cell names, holds no cells or no genes, or its raw counts hold a NaN, infinite, negative
        or non-integer value (the first bad cell and gene are named). Shapes, index arrays and
        storage sizes are checked before any data is read. The message names the file.
    ResourceError
        Reading the file would need more memory than is available.
    """
    path = Path(path)
    report = Reporter(progress, 100, "reading")
    report(0)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    kind = _kind(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():  # names are checked / made unique in _finish
            warnings.filterwarnings("ignore",
                                    message=r"(Variable|Observation) names are not unique")
            if kind == "h5ad":
                adata = _read_h5ad(path)
            elif kind == "table":
                adata = read_table(path, report)
            elif kind == "10x_h5":
                adata = read_10x_h5(path)
            else:
                adata = read_mtx(path)
        report(90)
        if metadata is not None:
            _add_metadata(adata, Path(metadata))
        _finish(adata, path)
        find_counts(adata, source=path)  # refuses NaN / Inf / negative / fractional counts
    except MemoryError:
        avail = available_memory()
        raise ResourceError(
            f"{path}: ran out of memory while reading this file"
            + (f" ({fmt_bytes(avail)} is available)" if avail is not None else "")
            + "; close other programs, use a machine with more memory, or subset the file"
        ) from None
    report(100)
    return adata


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "mtx"
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    if name.endswith(".h5") or name.endswith(".hdf5"):
        return "10x_h5"
    if name.endswith(MTX_SUFFIXES):
        return "mtx"
    raise DataError(
        f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'}; "
        "supported are .h5ad, .csv/.tsv/.txt (optionally .gz), 10x .h5, and a 10x folder "
        "or .mtx[.gz] file")


def _read_h5ad(path: Path) -> AnnData:
    import anndata

    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise DataError(f"{path}: cannot open the file ({e.strerror or e})") from None
    if magic != b"\x89HDF\r\n\x1a\n":
        raise DataError(f"{path}: not an h5ad file (it is not in HDF5 format); "
                        "it may be corrupt or have the wrong extension")
    import h5py

    probe_in_child(path)
    try:
        with h5py.File(path, "r") as f:
            check_h5ad(f, path)  # shapes, index arrays, storage and memory, before any data
    except PerturbStudioError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read this h5ad file; it may be truncated or corrupt "
                        f"({type(e).__name__}: {_short(e)})") from None
    try:
        return anndata.read_h5ad(path)
    except MemoryError:
        raise
    except Exception as e:  # h5py OSError/KeyError, anndata errors on truncated files
        raise DataError(f"{path}: cannot read this h5ad file; it may be truncated or corrupt "
                        f"({type(e).__name__}: {_short(e)})") from None


def _add_metadata(adata: AnnData, meta_path: Path) -> None:
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: metadata file not found")
    if meta_path.stat().st_size == 0:
        raise DataError(f"{meta_path}: the metadata file is empty")
    try:
        meta = pd.read_csv(meta_path, sep=sniff_sep(meta_path), index_col=0)
    except pd.errors.EmptyDataError:
        raise DataError(f"{meta_path}: the metadata file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{meta_path}: cannot read this metadata table "
                        f"({type(e).__name__}: {_short(e)})") from None
    meta.index = meta.index.astype(str)
    dup = meta.index[meta.index.duplicated()]
    if len(dup):
        raise DataError(f"{meta_path}: cell {dup[0]!r} has more than one row "
                        f"({len(set(dup))} duplicated cell names)")
    missing = adata.obs_names.difference(meta.index)
    if len(missing):
        raise DataError(f"{meta_path}: no metadata row for {len(missing)} of {adata.n_obs} "
                        f"cells (e.g. {', '.join(map(repr, missing[:3]))}); the first column "
                        "must hold the cell names used in the data file")
    meta = labels_to_categorical(meta.loc[adata.obs_names])
    for c in meta.columns:
        adata.obs[c] = meta[c].to_numpy() if not isinstance(meta[c].dtype, pd.CategoricalDtype) \
            else meta[c].array


def _finish(adata: AnnData, path: Path) -> None:
    if adata.n_vars == 0:
        raise DataError(f"{path}: the dataset has no genes")
    if adata.n_obs == 0:
        raise DataError(f"{path}: the dataset has no cells")
    _check_unique_cells(pd.Index(adata.obs_names), path)
    _check_sparse(adata, path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Variable names are not unique")
        _symbols_as_var_names(adata)
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()


def _check_sparse(adata: AnnData, path: Path) -> None:
    """Sparse matrices must have in-range indices and a non-decreasing indptr (scipy would
    otherwise read or write outside its arrays)."""
    import scipy.sparse as sp

    mats = [("X", adata.X)] + [(f"layers[{k!r}]", v) for k, v in adata.layers.items()]
    if adata.raw is not None:
        mats.append(("raw.X", adata.raw.X))
    for where, m in mats:
        if sp.issparse(m) and m.format in ("csr", "csc"):
            try:
                m.check_format(full_check=True)
            except (ValueError, TypeError, IndexError) as e:
                raise DataError(f"{path}: {where} is not a valid sparse matrix ({_short(e)}); "
                                "the file is corrupt") from None


def _symbols_as_var_names(adata: AnnData) -> None:
    """Use gene symbols as ``var_names`` when they are Ensembl IDs and a symbol column exists."""
    names = adata.var_names.astype(str)
    n = min(len(names), 1000)
    if n == 0 or np.mean([bool(_ENSEMBL_RE.match(g)) for g in names[:n]]) < 0.9:
        return
    cols = {str(c).lower(): c for c in adata.var.columns}
    for cand in _SYMBOL_COLUMNS:
        col = cols.get(cand)
        if col is None:
            continue
        sym = adata.var[col].astype(object)
        if not all(isinstance(v, str) or v is None or v != v for v in sym.iloc[:n]):
            continue
        sym_s = sym.where(sym.notna() & (sym.astype(str).str.len() > 0), None)
        if np.mean([bool(_ENSEMBL_RE.match(str(v))) for v in sym_s.iloc[:n] if v]) > 0.5:
            continue
        new = [s if s else g for s, g in zip(sym_s, names, strict=True)]
        if "gene_ids" not in adata.var.columns:
            adata.var["gene_ids"] = np.asarray(names, dtype=object)
        adata.var_names = pd.Index(new, dtype=object)
        return


# -- summary ----------------------------------------------------------------------------------


@dataclass
class ColumnSummary:
    """One ``obs`` column: its kind, number of distinct values and most common values."""

    name: str
    kind: str  # 'categorical' | 'numeric'
    n_unique: int
    top: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class DatasetSummary:
    """What the dataset panel shows before the user maps columns to roles."""

    n_cells: int
    n_genes: int
    counts_source: str | None
    counts_problem: str | None
    columns: list[ColumnSummary] = field(default_factory=list)


def summarize_dataset(adata: AnnData, *, n_top: int = 10) -> DatasetSummary:
    """Summarise a dataset: size, where its counts are, and each ``obs`` column.

    Parameters
    ----------
    adata
        The dataset.
    n_top
        How many of the most common values to list per column.

    Returns
    -------
    DatasetSummary
        ``counts_source`` is set when raw counts were found, otherwise ``counts_problem`` says
        why not. Columns are ``'numeric'`` (numbers, not booleans) or ``'categorical'``.
    """
    try:
        _, source, problem = find_counts(adata)
    except DataError as e:
        source, problem = None, str(e)
    return DatasetSummary(int(adata.n_obs), int(adata.n_vars), source, problem,
                          summarize_columns(adata.obs, n_top=n_top))


def summarize_columns(obs, *, n_top: int = 10) -> list[ColumnSummary]:
    """The :class:`ColumnSummary` of every column of an ``obs`` table."""
    columns = []
    for name in obs.columns:
        s = obs[name]
        kind = "numeric" if looks_numeric(s) else "categorical"
        vc = s.value_counts(dropna=True, sort=True)
        vc = vc[vc > 0]
        top = [(_fmt(v), int(n)) for v, n in vc.head(n_top).items()]
        columns.append(ColumnSummary(str(name), kind, int(len(vc)), top))
    return columns


def _fmt(v) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)
