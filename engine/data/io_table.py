"""Reading a CSV / TSV / TXT table (optionally gzipped) of cells x genes or genes x cells."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError, PerturbStudioError, ResourceError
from . import io_common
from .io_common import check_unique_cells as _check_unique_cells
from .io_common import fmt_bytes
from .io_common import short as _short
from .io_text import (
    SEP_NAMES,
    STREAM_ERRORS,
    BoundedStream,
    Layout,
    RaggedRow,
    detect_layout,
    locate,
    peek,
)

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


_CHUNK_VALUES = 1 << 23   # values per parsed chunk (pandas holds them as float64: 64 MiB)
TRAILING = "\x00trailing"  # the empty field after a trailing separator (dropped)
_PARSE_ERRORS = (pd.errors.ParserError, UnicodeDecodeError, ValueError, csv.Error,
                 *STREAM_ERRORS)
_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def sniff_sep(path: Path) -> str:
    """The separator of a table file (see :func:`engine.data.io_text.detect_layout`)."""
    return detect_layout(path, peek(path)).sep


def looks_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _column_names(layout: Layout) -> list[str]:
    """The header as pandas would name it (empty -> ``Unnamed: i``, repeats -> ``A.1``), with an
    empty first name added when the data rows have one field more (R's row names)."""
    raw = list(layout.header)
    if layout.trailing:
        raw = (raw[:-1] if len(raw) == layout.n_body else raw) + [TRAILING]
    elif layout.n_body is not None and layout.n_body == len(raw) + 1:
        raw = [""] + raw
    out, seen = [], set()
    for i, name in enumerate(raw):
        name = name.strip() or f"Unnamed: {i}"
        base, k = name, 0
        while name in seen:
            k += 1
            name = f"{base}.{k}"
        seen.add(name)
        out.append(name)
    return out


@dataclass
class _Table:
    """What is known about a table while reading it."""

    path: Path
    layout: Layout
    names: list[str]
    decimal: str

    @property
    def sep(self) -> str:
        return self.layout.sep

    def fail(self, msg: str) -> DataError:
        return DataError(f"{self.path}: {msg}")

    def _ragged(self, line: int, seen: int, cell: str | None) -> DataError:
        who = f" (cell {cell!r})" if cell is not None else ""
        return self.fail(f"cannot read this table: line {line:,}{who} has {seen:,} fields but "
                         f"the header has {len(self.names)} (a ragged row; read as "
                         f"{SEP_NAMES[self.sep]}-separated); every row needs one value per "
                         "column")

    def ragged(self, target: int, gene: str | None = None, cell=None) -> DataError:
        """The error for data record ``target`` (1-based): a ragged row before or at it, or an
        empty value for ``gene``."""
        n = len(self.names)
        k, line, seen, fields = locate(self.path, self.sep, n, target)
        if k > 0 and seen != n:
            return self._ragged(line, seen, fields[0] if fields and seen < n else None)
        where = f"line {line:,}" if k > 0 else f"data row {target:,}"
        who = f" (cell {cell!r})" if cell is not None else ""
        return self.fail(f"{where}{who} has no value for gene {gene!r} (an empty field or NA); "
                         "every gene column needs a number in every row")

    def ragged_row(self) -> DataError | None:
        """The error for the first ragged row, None if the csv module finds none."""
        n = len(self.names)
        k, line, seen, fields = locate(self.path, self.sep, n, 1 << 62)
        if k < 0 or seen == n:
            return None
        return self._ragged(line, seen, fields[0] if fields and seen < n else None)

    def parser_error(self, e: Exception) -> DataError:
        m = _FIELDS_RE.search(str(e))
        if m and isinstance(e, pd.errors.ParserError):
            return self.ragged_row() or self._ragged(int(m.group(2)), int(m.group(3)), None)
        return self.fail(f"cannot read this table ({type(e).__name__}: {_short(e)}; read as "
                         f"{self.layout.describe()})")


def _open_table(path: Path) -> tuple[_Table, pd.DataFrame]:
    """Detect the layout and parse the first rows."""
    text = peek(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    layout = detect_layout(path, text)
    names = _column_names(layout)
    decimal = "."
    if layout.sep == ";" and re.search(r"(^|;)-?\d+,\d+(;|$)", text, re.M) and \
            not re.search(r"(^|;)-?\d+\.\d+(;|$)", text, re.M):
        decimal = ","  # European CSV: 0,5 means 0.5
    table = _Table(path, layout, names, decimal)
    try:
        head = pd.read_csv(io.StringIO(text), sep=layout.sep, header=0, names=names,
                           index_col=None, nrows=50, decimal=decimal)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except _PARSE_ERRORS as e:
        raise table.parser_error(e) from None
    return table, head.drop(columns=[TRAILING], errors="ignore")


def read_table(path: Path, report: Callable[..., None]) -> AnnData:
    """Read a CSV / TSV table of cells x genes (or genes x cells) in bounded chunks."""
    try:
        return _read_table(path, report)
    except (PerturbStudioError, MemoryError):
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as e:  # a parser failure on input nobody anticipated: still the file's
        raise DataError(f"{path}: cannot read this table ({type(e).__name__}: {_short(e)})") \
            from None


def _read_table(path: Path, report: Callable[..., None]) -> AnnData:
    table, head = _open_table(path)
    try:
        return _read_rows(table, head, report, check_fields=True)
    except RaggedRow:
        err = table.ragged_row()
        if err is not None:
            raise err from None
    # odd quoting fooled the fast field count; the csv module saw no ragged row: read unchecked
    return _read_rows(table, head, report, check_fields=False)


def _read_rows(table: _Table, head: pd.DataFrame, report, check_fields: bool) -> AnnData:
    import anndata

    path = table.path
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
    stream = BoundedStream(path, table.sep, len(table.names) if check_fields else None)
    rows = max(1, min(_CSV_CHUNK_ROWS, _CHUNK_VALUES // (len(table.names) + 1)))
    done = 0
    try:
        reader = pd.read_csv(io.BufferedReader(stream, 1 << 20), sep=table.sep, header=0,
                             names=table.names, index_col=0 if has_index else None,
                             chunksize=rows, encoding="utf-8-sig", decimal=table.decimal)
        chunks = _checked_chunks(table, reader, stream, total, report)
        if transposed:
            return _read_transposed(table, chunks)
        gene_cols: list[str] | None = None
        obs_parts, x_parts, names, held = [], [], [], 0
        for chunk in chunks:
            if gene_cols is None:
                gene_cols = [c for c in chunk.columns
                             if looks_numeric(chunk[c]) and not _is_metadata_name(c)]
                obs_cols = [c for c in chunk.columns if c not in set(gene_cols)]
            _check_gene_columns(table, chunk, gene_cols, done)
            obs_parts.append(chunk[obs_cols])
            x_parts.append(sp.csr_matrix(_as_float32(table, chunk[gene_cols], done)))
            names.append(chunk.index.astype(str) if has_index else None)
            done += len(chunk)
            held += x_parts[-1].data.nbytes * 2 + 64 * len(chunk) * (len(obs_cols) + 1)
            _check_room(path, held, done, chunk.size * 16)
    except (PerturbStudioError, RaggedRow):
        raise
    except _PARSE_ERRORS as e:
        raise table.parser_error(e) from None
    finally:
        stream.close()
    if gene_cols is None:
        raise DataError(f"{path}: the table has a header but no cells")
    if not gene_cols:
        cols = ", ".join(repr(str(c)) for c in head.columns[:5])
        more = f" ... ({head.shape[1]} in all)" if head.shape[1] > 5 else ""
        raise DataError(f"{path}: no gene columns found (no numeric columns; read as "
                        f"{table.layout.describe()}, the columns are {cols}{more}); the table "
                        "must have one row per cell and one numeric column per gene, all "
                        "separated by commas, tabs or semicolons")
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


def _checked_chunks(table: _Table, reader, stream: BoundedStream, total: int, report):
    """The non-empty chunks, with progress."""
    for chunk in reader:
        report(min(int(85 * stream.raw.tell() / total), 85))
        if TRAILING in chunk.columns:
            extra = chunk[TRAILING].notna().to_numpy()
            if extra.any():
                raise table.fail(f"cell {str(chunk.index[int(np.flatnonzero(extra)[0])])!r} has "
                                 "a value after the last column (the other rows end with an "
                                 "empty field); every row needs one value per column")
            chunk = chunk.drop(columns=[TRAILING])
        if len(chunk):
            yield chunk


def _check_gene_columns(table: _Table, chunk: pd.DataFrame, gene_cols: list, done: int) -> None:
    bad = [c for c in gene_cols if not looks_numeric(chunk[c])]
    if bad:
        col = chunk[bad[0]]
        text = pd.to_numeric(col, errors="coerce").isna() & col.notna()
        row = chunk.index[text.to_numpy()][0] if text.any() else chunk.index[0]
        raise table.fail(f"column {bad[0]!r} looks like a gene (numbers in the first rows) but "
                         f"holds text in row {row!r}; put text columns in a metadata file or "
                         "make them text throughout")
    if not gene_cols:
        return
    nan = chunk[gene_cols].isna().to_numpy()
    if nan.any():
        i, j = (int(v[0]) for v in np.nonzero(nan))
        raise table.ragged(done + i + 1, gene=str(gene_cols[j]), cell=str(chunk.index[i]))


def _as_float32(table: _Table, values: pd.DataFrame, done: int) -> np.ndarray:
    """The values as float32; one beyond float32's range is refused, naming its row and column."""
    x = values.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        big = np.isfinite(x) & (np.abs(x) > np.finfo(np.float32).max)
    if big.any():
        i, j = (int(v[0]) for v in np.nonzero(big))
        raise table.fail(f"data row {done + i + 1:,} (name {str(values.index[i])!r}), column "
                         f"{str(values.columns[j])!r} holds {x[i, j]:.6g}, too large for a count")
    return x.astype(np.float32)


def _check_room(path: Path, held: int, n_rows: int, chunk_bytes: int) -> None:
    """The cells read so far must leave room for their final copy (stacking) and one chunk."""
    avail = io_common.available_memory()
    if avail is not None and held + chunk_bytes > avail:
        raise ResourceError(f"{path}: after {n_rows:,} rows this table holds "
                            f"{fmt_bytes(held)} in memory and only {fmt_bytes(avail)} is left, "
                            "too little to finish reading it; use a machine with more memory, "
                            "or convert the table to a sparse .h5ad or 10x file")


def _is_metadata_name(name) -> bool:
    low = str(name).strip().lower()
    return low in NUMERIC_METADATA or bool(NUMERIC_METADATA_PREFIX.match(low))


def _read_transposed(table: _Table, chunks) -> AnnData:
    import anndata

    parts, genes, cells, done, held = [], [], None, 0, 0
    for chunk in chunks:
        if cells is None:
            cells = [str(c) for c in chunk.columns]
        bad = [c for c in chunk.columns if not looks_numeric(chunk[c])]
        if bad:
            raise table.fail(f"read as genes x cells (the header looks like cell barcodes) but "
                             f"cell column {bad[0]!r} holds text")
        nan = chunk.isna().to_numpy()
        if nan.any():
            i, j = (int(v[0]) for v in np.nonzero(nan))
            raise table.ragged(done + i + 1, gene=str(chunk.index[i]),
                               cell=str(chunk.columns[j]))
        parts.append(sp.csr_matrix(_as_float32(table, chunk, done)))
        genes.extend(str(g) for g in chunk.index)
        done += len(chunk)
        held += parts[-1].data.nbytes * 2 + 64 * len(chunk)
        _check_room(table.path, held, done, chunk.size * 16)
    if cells is None:
        raise table.fail("the table has a header but no genes")
    x = sp.vstack(parts, format="csr").T.tocsr()
    _check_unique_cells(pd.Index(cells), table.path)
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


