"""Reading a CSV / TSV / TXT table (optionally gzipped) of cells x genes or genes x cells."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from .io_common import check_unique_cells as _check_unique_cells
from .io_common import open_text as _open_text
from .io_common import short as _short

if TYPE_CHECKING:
    from anndata import AnnData

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
_BARCODE_RE = re.compile(r"^[ACGTN]{8,}(?:[-_.]\w+)?$")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
_CSV_CHUNK_ROWS = 2000


def sniff_sep(path: Path) -> str:
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


def looks_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def read_table(path: Path, report: Callable[..., None]) -> AnnData:
    import anndata

    sep = sniff_sep(path)
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
    all_numeric = rest.shape[1] > 0 and all(looks_numeric(rest[c]) for c in rest.columns)
    barcode_like = np.mean([bool(_BARCODE_RE.match(str(c))) for c in rest.columns]) \
        if rest.shape[1] else 0.0
    transposed = all_numeric and not looks_numeric(head.iloc[:, 0]) and (
        first_key in _GENE_HEADER_WORDS or barcode_like > 0.5)
    has_index = transposed or first_key in _CELL_HEADER_WORDS or not looks_numeric(
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
                             if looks_numeric(chunk[c]) and not _is_metadata_name(c)]
                obs_cols = [c for c in chunk.columns if c not in set(gene_cols)]
            bad = [c for c in gene_cols if not looks_numeric(chunk[c])]
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
    return anndata.AnnData(X=x, obs=labels_to_categorical(obs), var=var)


def _is_metadata_name(name) -> bool:
    low = str(name).strip().lower()
    return low in NUMERIC_METADATA or bool(NUMERIC_METADATA_PREFIX.match(low))


def _read_transposed(path: Path, reader, raw, total: int, report) -> AnnData:
    import anndata

    parts, genes, cells = [], [], None
    for chunk in reader:
        if cells is None:
            cells = [str(c) for c in chunk.columns]
        bad = [c for c in chunk.columns if not looks_numeric(chunk[c])]
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


def labels_to_categorical(obs: pd.DataFrame) -> pd.DataFrame:
    """Text columns become categoricals of strings (missing values stay missing)."""
    obs = obs.copy()
    obs.columns = [str(c) for c in obs.columns]
    for c in obs.columns:
        s = obs[c]
        if s.dtype == object or pd.api.types.is_string_dtype(s):
            obs[c] = pd.Categorical(s.map(lambda v: v if pd.isna(v) else str(v)))
    return obs


