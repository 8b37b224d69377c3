"""Readers for 10x Genomics data: the HDF5 ``.h5`` file and the Matrix Market folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import DataError
from .io_common import short as _short

if TYPE_CHECKING:
    from anndata import AnnData

MTX_SUFFIXES = (".mtx", ".mtx.gz")


def read_10x_h5(path: Path) -> AnnData:
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


