"""Readers for 10x Genomics data: the HDF5 ``.h5`` file and the Matrix Market folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError, PerturbStudioError
from .io_common import MAX_DEFLATE_RATIO, check_memory
from .io_common import short as _short
from .io_hdf5 import check_10x_h5, probe_in_child

if TYPE_CHECKING:
    from anndata import AnnData

MTX_SUFFIXES = (".mtx", ".mtx.gz")


def read_10x_h5(path: Path) -> AnnData:
    """Read a Cell Ranger .h5 (v3 ``matrix`` group, or v2 with one genome group), keeping the
    ``Gene Expression`` features. Shapes, index arrays and memory are checked before the data
    is read, and every index is checked before a matrix is built from it."""
    import h5py

    probe_in_child(path)
    try:
        with h5py.File(path, "r") as f:
            if {"X", "obs", "var"} <= set(f.keys()):
                raise DataError(f"{path}: this looks like an AnnData file; rename it to .h5ad")
            check_10x_h5(f, path)  # shapes, index arrays, storage and memory, before any data
            return _read_10x_group(f, path)
    except (PerturbStudioError, MemoryError):
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read this HDF5 file; it may be truncated or corrupt "
                        f"({type(e).__name__}: {_short(e)})") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable 10x Genomics .h5 file "
                        f"({type(e).__name__}: {_short(e)})") from None


def _strings(node, key: str, path: Path, n: int) -> np.ndarray:
    if key not in node or not hasattr(node[key], "shape"):
        raise DataError(f"{path}: not a readable 10x Genomics .h5 file ({node.name}/{key} is "
                        "missing)")
    ds = node[key]
    if ds.shape != (n,):
        raise DataError(f"{path}: {ds.name} lists {ds.shape} entries but the matrix needs {n}; "
                        "the file is corrupt")
    if ds.dtype.kind not in ("S", "O", "U"):
        return np.asarray(ds[()]).astype(str).astype(object)
    return np.asarray(ds.asstr(errors="replace")[()], dtype=object)


def _read_10x_group(f, path: Path) -> AnnData:
    import anndata

    if "matrix" in f:
        g, v3 = f["matrix"], True
    else:
        groups = [k for k in f if not hasattr(f[k], "shape")]
        if len(groups) != 1:
            found = ", ".join(map(repr, groups)) or "none"
            raise DataError(f"{path}: not a readable 10x Genomics .h5 file (expected a 'matrix' "
                            f"group or one genome group; found {found})")
        g, v3 = f[groups[0]], False
    for part in ("data", "indices", "indptr", "shape", "barcodes"):
        if part not in g:
            raise DataError(f"{path}: not a readable 10x Genomics .h5 file ({g.name}/{part} is "
                            "missing)")
    n_genes, n_cells = (int(v) for v in g["shape"][()])
    data = np.asarray(g["data"][()])
    if data.dtype.kind not in "iuf" or data.ndim != 1:
        raise DataError(f"{path}: {g.name}/data holds {data.dtype} values, not counts")
    indices = np.asarray(g["indices"][()])
    indptr = np.asarray(g["indptr"][()])
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise DataError(f"{path}: the index arrays of {g.name} are not integers; the file is "
                        "corrupt")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_genes):
        raise DataError(f"{path}: {g.name}/indices point outside the {n_genes:,} genes; the "
                        "file is corrupt")
    if len(indptr) > 1 and (np.diff(indptr) < 0).any():
        raise DataError(f"{path}: {g.name}/indptr decreases; the file is corrupt")
    x = sp.csr_matrix((data.astype(np.float32, copy=False), indices, indptr),
                      shape=(n_cells, n_genes))
    obs = pd.DataFrame(index=pd.Index(_strings(g, "barcodes", path, n_cells), dtype=object))
    if v3:
        fe = g["features"] if "features" in g else None
        if fe is None or hasattr(fe, "shape"):
            raise DataError(f"{path}: not a readable 10x Genomics .h5 file (no features group)")
        var = pd.DataFrame(index=pd.Index(_strings(fe, "name", path, n_genes), dtype=object))
        if "gene_id" in fe:  # probe-barcode matrix
            var["gene_ids"] = _strings(fe, "gene_id", path, n_genes)
            var["probe_ids"] = _strings(fe, "id", path, n_genes)
        else:
            var["gene_ids"] = _strings(fe, "id", path, n_genes)
        var["feature_types"] = _strings(fe, "feature_type", path, n_genes)
        for k in fe:
            if k not in ("name", "id", "gene_id", "feature_type", "_all_tag_keys") and \
                    hasattr(fe[k], "shape") and fe[k].shape == (n_genes,):
                var[k] = np.asarray(fe[k][()]).astype(bool) if fe[k].dtype.kind == "b" \
                    else _strings(fe, k, path, n_genes)
    else:
        var = pd.DataFrame(index=pd.Index(_strings(g, "gene_names", path, n_genes),
                                          dtype=object))
        var["gene_ids"] = _strings(g, "genes", path, n_genes)
    adata = anndata.AnnData(X=x, obs=obs, var=var)
    if "feature_types" in var:
        gex = (var["feature_types"] == "Gene Expression").to_numpy()
        if gex.any() and not gex.all():
            adata = adata[:, np.flatnonzero(gex)].copy()
    return adata


def read_mtx(path: Path) -> AnnData:
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
    feat = _read_tsv_noheader(features)
    bc = _read_tsv_noheader(barcodes)
    n_genes, n_cells = check_mtx(matrix, features.name, len(feat), barcodes.name, len(bc))
    try:
        m = scipy.io.mmread(str(matrix))
    except MemoryError:
        raise
    except Exception as e:
        raise DataError(f"{matrix}: cannot read this Matrix Market file; it may be truncated "
                        f"or corrupt ({type(e).__name__}: {_short(e)})") from None
    if sp.issparse(m):
        m = sp.csr_matrix(m, dtype=np.float32)
    else:
        m = sp.csr_matrix(np.asarray(m, dtype=np.float32))
    if m.shape != (n_genes, n_cells):  # pragma: no cover (mmread follows the header)
        raise DataError(f"{matrix}: the matrix is {m.shape} but its header says "
                        f"{(n_genes, n_cells)}; the file is corrupt")
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




_MTX_HEADER_LIMIT = 1 << 20   # banner + comments + size line


def _mtx_header(path: Path) -> tuple[list[str], list[str], int]:
    """The banner words, the size-line words and the bytes of (uncompressed) header."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            banner = f.readline(4096)
            used = len(banner)
            if not banner.lower().startswith(b"%%matrixmarket"):
                raise DataError(f"{path}: not a Matrix Market file (the first line must start "
                                "with %%MatrixMarket); it may be truncated or corrupt")
            while True:
                line = f.readline(_MTX_HEADER_LIMIT)
                used += len(line)
                if used > _MTX_HEADER_LIMIT:
                    raise DataError(f"{path}: no size line within the first 1 MiB (only "
                                    "comments); the file is corrupt")
                if not line:
                    raise DataError(f"{path}: the file ends before its size line; it may be "
                                    "truncated or corrupt")
                if line.strip() and not line.startswith(b"%"):
                    break
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read this Matrix Market file; it may be truncated or "
                        f"corrupt ({type(e).__name__}: {_short(e)})") from None
    words = banner.decode("ascii", "replace").lower().split()
    return words, line.decode("ascii", "replace").split(), used


def check_mtx(path: Path, feat_name: str, n_feat: int, bc_name: str, n_bc: int
              ) -> tuple[int, int]:
    """Check a Matrix Market header against the features / barcodes lists, the file size and
    the memory available, before reading it. Returns (genes, cells)."""
    banner, size, used = _mtx_header(path)
    layout = banner[2] if len(banner) > 2 else ""
    field = banner[3] if len(banner) > 3 else ""
    if layout not in ("coordinate", "array"):
        raise DataError(f"{path}: unsupported Matrix Market layout {layout!r} (expected "
                        "'coordinate' or 'array'); the file may be corrupt")
    if field in ("complex", "hermitian"):
        raise DataError(f"{path}: the matrix holds complex numbers; counts must be real")
    want = 3 if layout == "coordinate" else 2
    try:
        dims = [int(w) for w in size[:want]]
    except ValueError:
        dims = []
    if len(size) != want or len(dims) != want or min(dims) < 0:
        raise DataError(f"{path}: the size line {' '.join(size)[:80]!r} is not {want} numbers "
                        ">= 0; the file may be truncated or corrupt")
    rows, cols = dims[0], dims[1]
    if rows != n_feat:
        raise DataError(f"{path}: the matrix has {rows} rows but {feat_name} lists "
                        f"{n_feat} features")
    if cols != n_bc:
        raise DataError(f"{path}: the matrix has {cols} columns but {bc_name} lists "
                        f"{n_bc} barcodes")
    nnz = dims[2] if layout == "coordinate" else rows * cols
    if nnz > rows * cols:
        raise DataError(f"{path}: the header declares {nnz:,} entries but a {rows:,} x {cols:,} "
                        f"matrix has only {rows * cols:,} positions; the file is truncated or "
                        "corrupt")
    min_entry = 2 if layout == "array" else (4 if field == "pattern" else 6)
    file_size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if nnz * min_entry > MAX_DEFLATE_RATIO * file_size + _MTX_HEADER_LIMIT:
            raise DataError(f"{path}: the header declares {nnz:,} entries, more than a "
                            f"{file_size:,}-byte gzip file can hold; the file is truncated, "
                            "corrupt or forged")
    elif nnz * min_entry > file_size - used:
        raise DataError(f"{path}: the header declares {nnz:,} entries but the file has only "
                        f"{file_size - used:,} bytes after its header, too few for them; it may "
                        "be truncated or corrupt")
    # mmread: int64 rows + cols + float64 values; then float32 CSR twice (+ indptr, transpose)
    check_memory(path, nnz * (24 + 2 * 8) + 16 * (rows + cols + 2), "this matrix")
    return rows, cols
