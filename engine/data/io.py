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

import gzip
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from ..progress import ProgressFn, Reporter
from .io_counts import find_counts, get_counts

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["NUMERIC_METADATA", "NUMERIC_METADATA_PREFIX", "ColumnSummary", "DatasetSummary",
           "get_counts", "read_dataset", "summarize_dataset"]

#: Numeric CSV columns with these names (case-insensitive) are cell metadata, not genes.
NUMERIC_METADATA = frozenset({
    "dose", "dose_val", "dose_value", "dosage", "concentration", "time", "timepoint",
    "n_counts", "n_genes", "total_counts", "n_genes_by_counts", "ncounts", "ngenes",
    "percent_mito", "pct_counts_mt", "is_control", "control", "replicate", "batch",
    "donor", "sample", "plate", "well", "lane", "rep", "bio_rep", "louvain", "leiden",
    "cluster", "clusters", "seurat_clusters", "split",
})
#: ... and so are numeric columns whose lower-cased name starts like this.
NUMERIC_METADATA_PREFIX = re.compile(
    r"^(n_|ncounts|ngenes|total_counts|pct_|percent_|frac_|dose|is_|log1p_|grna_|sgrna_|"
    r"size_factor)")

_GENE_HEADER_WORDS = frozenset({
    "gene", "genes", "gene_id", "gene_ids", "gene_symbol", "gene_symbols", "gene_name",
    "symbol", "feature", "features", "feature_name", "ensembl", "ensembl_id",
})
_CELL_HEADER_WORDS = frozenset({
    "", "cell", "cells", "cell_id", "cell_name", "barcode", "barcodes", "cell_barcode",
    "obs_names", "index", "id",
})
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names",
                   "symbol", "symbols", "gene", "genes", "name", "feature_names")
_BARCODE_RE = re.compile(r"^[ACGTN]{8,}(?:[-_.]\w+)?$")
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(?:\.\d+)?$")
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
_MTX_SUFFIXES = (".mtx", ".mtx.gz")
_CSV_CHUNK_ROWS = 2000


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
        cell names, or holds no cells or no genes. The message names the file.
    """
    path = Path(path)
    report = Reporter(progress, 100, "reading")
    report(0)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    kind = _kind(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    with warnings.catch_warnings():  # names are checked / made unique in _finish
        warnings.filterwarnings("ignore", message=r"(Variable|Observation) names are not unique")
        if kind == "h5ad":
            adata = _read_h5ad(path)
        elif kind == "table":
            adata = _read_table(path, report)
        elif kind == "10x_h5":
            adata = _read_10x_h5(path)
        else:
            adata = _read_mtx(path)
    report(90)
    if metadata is not None:
        _add_metadata(adata, Path(metadata))
    _finish(adata, path)
    find_counts(adata, source=path)  # refuses NaN / Inf / negative / fractional counts anywhere
    report(100)
    return adata


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "mtx"
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(_TABLE_SUFFIXES):
        return "table"
    if name.endswith(".h5") or name.endswith(".hdf5"):
        return "10x_h5"
    if name.endswith(_MTX_SUFFIXES):
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
    try:
        return anndata.read_h5ad(path)
    except Exception as e:  # h5py OSError/KeyError, anndata errors on truncated files
        raise DataError(f"{path}: cannot read this h5ad file; it may be truncated or corrupt "
                        f"({type(e).__name__}: {_short(e)})") from None


def _read_10x_h5(path: Path) -> AnnData:
    import h5py
    import scanpy as sc

    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
    except Exception as e:
        raise DataError(f"{path}: cannot read this HDF5 file; it may be truncated or corrupt "
                        f"({type(e).__name__}: {_short(e)})") from None
    if {"X", "obs", "var"} <= keys:
        raise DataError(f"{path}: this looks like an AnnData file; rename it to .h5ad")
    try:
        adata = sc.read_10x_h5(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable 10x Genomics .h5 file "
                        f"({type(e).__name__}: {_short(e)})") from None
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def _read_mtx(path: Path) -> AnnData:
    import anndata
    import scipy.io

    if path.is_dir():
        folder, prefix = path, ""
        matrix = _find(folder, "", ("matrix.mtx.gz", "matrix.mtx"))
        if matrix is None:
            raise DataError(f"{path}: this folder has no matrix.mtx or matrix.mtx.gz; "
                            "a 10x folder needs matrix.mtx, features.tsv (or genes.tsv) "
                            "and barcodes.tsv")
    else:
        folder, matrix = path.parent, path
        name = path.name
        low = name.lower()
        stem = name[: -len(".mtx.gz")] if low.endswith(".mtx.gz") else name[: -len(".mtx")]
        prefix = stem[: -len("matrix")] if stem.lower().endswith("matrix") else ""
    features = _find(folder, prefix, ("features.tsv.gz", "features.tsv", "genes.tsv.gz",
                                      "genes.tsv"))
    barcodes = _find(folder, prefix, ("barcodes.tsv.gz", "barcodes.tsv"))
    if features is None or barcodes is None:
        missing = ", ".join(n for n, f in (("features.tsv (or genes.tsv)", features),
                                           ("barcodes.tsv", barcodes)) if f is None)
        raise DataError(f"{matrix}: the 10x matrix needs {missing} next to it in {folder}")
    try:
        m = scipy.io.mmread(str(matrix))
    except Exception as e:
        raise DataError(f"{matrix}: cannot read this Matrix Market file; it may be truncated "
                        f"or corrupt ({type(e).__name__}: {_short(e)})") from None
    feat = _read_tsv_noheader(features)
    bc = _read_tsv_noheader(barcodes)
    m = sp.csr_matrix(m, dtype=np.float32)
    n_genes, n_cells = m.shape
    if len(feat) != n_genes:
        raise DataError(f"{matrix}: the matrix has {n_genes} rows but {features.name} lists "
                        f"{len(feat)} features")
    if len(bc) != n_cells:
        raise DataError(f"{matrix}: the matrix has {n_cells} columns but {barcodes.name} lists "
                        f"{len(bc)} barcodes")
    ids = feat[0].astype(str).to_numpy()
    symbols = feat[1].astype(str).to_numpy() if feat.shape[1] > 1 else ids
    var = pd.DataFrame({"gene_ids": ids}, index=pd.Index(symbols, dtype=object))
    keep = slice(None)
    if feat.shape[1] > 2:
        ftype = feat[2].astype(str).to_numpy()
        var["feature_types"] = ftype
        gex = ftype == "Gene Expression"
        if gex.any() and not gex.all():
            keep = np.flatnonzero(gex)
    x = m.T.tocsr()
    obs = pd.DataFrame(index=pd.Index(bc[0].astype(str).to_numpy(), dtype=object))
    adata = anndata.AnnData(X=x, obs=obs, var=var)
    if not isinstance(keep, slice):
        adata = adata[:, keep].copy()
    return adata


def _find(folder: Path, prefix: str, names: tuple[str, ...]) -> Path | None:
    for n in names:
        p = folder / f"{prefix}{n}"
        if p.is_file():
            return p
    return None


def _read_tsv_noheader(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read this file ({type(e).__name__}: {_short(e)})") \
            from None
    return df


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _sniff_sep(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tsv", ".tsv.gz")):
        return "\t"
    if name.endswith((".csv", ".csv.gz")):
        return ","
    try:
        with _open_text(path) as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read this file as text ({_short(e)})") from None
    return "\t" if line.count("\t") >= line.count(",") else ","


def _looks_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _read_table(path: Path, report: Callable[..., None]) -> AnnData:
    import anndata

    sep = _sniff_sep(path)
    try:
        head = pd.read_csv(path, sep=sep, nrows=50, index_col=None)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read this table ({type(e).__name__}: {_short(e)})") \
            from None
    if head.shape[1] == 0:
        raise DataError(f"{path}: the table has no columns")
    first = str(head.columns[0])
    first_key = "" if first.startswith("Unnamed:") else first.strip().lower()
    rest = head.iloc[:, 1:]
    all_numeric = rest.shape[1] > 0 and all(_looks_numeric(rest[c]) for c in rest.columns)
    barcode_like = np.mean([bool(_BARCODE_RE.match(str(c))) for c in rest.columns]) \
        if rest.shape[1] else 0.0
    transposed = all_numeric and not _looks_numeric(head.iloc[:, 0]) and (
        first_key in _GENE_HEADER_WORDS or barcode_like > 0.5)
    has_index = transposed or first_key in _CELL_HEADER_WORDS or not _looks_numeric(
        head.iloc[:, 0])

    total = max(path.stat().st_size, 1)
    raw = open(path, "rb")  # noqa: SIM115 (closed below; tell() gives progress)
    try:
        src = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
        reader = pd.read_csv(src, sep=sep, index_col=0 if has_index else None,
                             chunksize=_CSV_CHUNK_ROWS)
        if transposed:
            return _read_transposed(path, reader, raw, total, report)
        gene_cols: list[str] | None = None
        obs_parts, x_parts, names = [], [], []
        for chunk in reader:
            if len(chunk) == 0:
                continue
            if gene_cols is None:
                gene_cols = [c for c in chunk.columns
                             if _looks_numeric(chunk[c]) and not _is_metadata_name(c)]
                obs_cols = [c for c in chunk.columns if c not in set(gene_cols)]
            bad = [c for c in gene_cols if not _looks_numeric(chunk[c])]
            if bad:
                row = chunk.index[pd.to_numeric(chunk[bad[0]], errors="coerce").isna()
                                  & chunk[bad[0]].notna()][0]
                raise DataError(f"{path}: column {bad[0]!r} looks like a gene (numbers in the "
                                f"first rows) but holds text in row {row!r}; put text columns "
                                "in a metadata file or make them text throughout")
            obs_parts.append(chunk[obs_cols])
            x_parts.append(sp.csr_matrix(chunk[gene_cols].to_numpy(dtype=np.float32)))
            names.append(chunk.index.astype(str) if has_index else None)
            report(min(int(85 * raw.tell() / total), 85))
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read this table ({type(e).__name__}: {_short(e)})") \
            from None
    finally:
        raw.close()
    if gene_cols is None:
        raise DataError(f"{path}: the table has a header but no cells")
    if not gene_cols:
        raise DataError(f"{path}: no gene columns found (no numeric columns); the table must "
                        "have one row per cell and one numeric column per gene")
    obs = pd.concat(obs_parts)
    if has_index:
        obs.index = pd.Index(np.concatenate([np.asarray(n) for n in names]), dtype=object)
    else:
        obs.index = pd.Index([str(i) for i in range(len(obs))], dtype=object)
    obs.index.name = None
    _check_unique_cells(obs.index, path)
    x = sp.vstack(x_parts, format="csr")
    var = pd.DataFrame(index=pd.Index([str(g) for g in gene_cols], dtype=object))
    return anndata.AnnData(X=x, obs=_labels_to_categorical(obs), var=var)


def _is_metadata_name(name) -> bool:
    low = str(name).strip().lower()
    return low in NUMERIC_METADATA or bool(NUMERIC_METADATA_PREFIX.match(low))


def _read_transposed(path: Path, reader, raw, total: int, report) -> AnnData:
    import anndata

    parts, genes, cells = [], [], None
    for chunk in reader:
        if cells is None:
            cells = [str(c) for c in chunk.columns]
        bad = [c for c in chunk.columns if not _looks_numeric(chunk[c])]
        if bad:
            raise DataError(f"{path}: read as genes x cells (the header looks like cell "
                            f"barcodes) but cell column {bad[0]!r} holds text")
        parts.append(sp.csr_matrix(chunk.to_numpy(dtype=np.float32)))
        genes.extend(str(g) for g in chunk.index)
        report(min(int(85 * raw.tell() / total), 85))
    if cells is None:
        raise DataError(f"{path}: the table has a header but no genes")
    x = sp.vstack(parts, format="csr").T.tocsr()
    _check_unique_cells(pd.Index(cells), path)
    obs = pd.DataFrame(index=pd.Index(cells, dtype=object))
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    return anndata.AnnData(X=x, obs=obs, var=var)


def _labels_to_categorical(obs: pd.DataFrame) -> pd.DataFrame:
    """Text columns become categoricals of strings (missing values stay missing)."""
    obs = obs.copy()
    obs.columns = [str(c) for c in obs.columns]
    for c in obs.columns:
        s = obs[c]
        if s.dtype == object or pd.api.types.is_string_dtype(s):
            obs[c] = pd.Categorical(s.map(lambda v: v if pd.isna(v) else str(v)))
    return obs


def _add_metadata(adata: AnnData, meta_path: Path) -> None:
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: metadata file not found")
    if meta_path.stat().st_size == 0:
        raise DataError(f"{meta_path}: the metadata file is empty")
    try:
        meta = pd.read_csv(meta_path, sep=_sniff_sep(meta_path), index_col=0)
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
    meta = _labels_to_categorical(meta.loc[adata.obs_names])
    for c in meta.columns:
        adata.obs[c] = meta[c].to_numpy() if not isinstance(meta[c].dtype, pd.CategoricalDtype) \
            else meta[c].array


def _finish(adata: AnnData, path: Path) -> None:
    if adata.n_vars == 0:
        raise DataError(f"{path}: the dataset has no genes")
    if adata.n_obs == 0:
        raise DataError(f"{path}: the dataset has no cells")
    _check_unique_cells(pd.Index(adata.obs_names), path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Variable names are not unique")
        _symbols_as_var_names(adata)
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()


def _check_unique_cells(names: pd.Index, path: Path) -> None:
    if names.has_duplicates:
        dup = names[names.duplicated()]
        raise DataError(f"{path}: cell names must be unique, but {len(set(dup))} are repeated "
                        f"(e.g. {dup[0]!r})")


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


def _short(e: BaseException, limit: int = 200) -> str:
    s = str(e).strip().replace("\n", " ") or type(e).__name__
    return s if len(s) <= limit else s[:limit] + "..."


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
    columns = []
    for name in adata.obs.columns:
        s = adata.obs[name]
        kind = "numeric" if _looks_numeric(s) else "categorical"
        vc = s.value_counts(dropna=True, sort=True)
        vc = vc[vc > 0]
        top = [(_fmt(v), int(n)) for v, n in vc.head(n_top).items()]
        columns.append(ColumnSummary(str(name), kind, int(len(vc)), top))
    return DatasetSummary(int(adata.n_obs), int(adata.n_vars), source, problem, columns)


def _fmt(v) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)
