"""The one log1p-normalisation of the engine: ``log1p(counts / library size * target_sum)``.

Every score, plot and table of Perturb Studio compares cells in this space (scanpy's
``normalize_total(target_sum=1e4)`` followed by ``log1p``), so it is written once, here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TARGET_SUM = 1e4

__all__ = ["TARGET_SUM", "log1p_normalize"]


def log1p_normalize(counts: Any, target_sum: float = TARGET_SUM, *,
                    dtype: Any = np.float32) -> Any:
    """Return ``log1p(counts / library * target_sum)`` of a cells x genes count matrix.

    Parameters
    ----------
    counts
        Raw counts, cells in rows: a scipy sparse matrix, a numpy array or anything
        ``np.asarray`` takes. It is never modified.
    target_sum
        Counts per cell after normalisation (default 10,000, scanpy's convention).
    dtype
        Floating type of the result and of the arithmetic: float32 (default, half the memory)
        or float64 (the evaluation scores, :func:`engine.evaluate.lognorm`).

    Returns
    -------
    The same kind of matrix as ``counts``: a CSR matrix (same sparsity pattern; explicit zeros
    kept) for sparse input, else a dense ``numpy`` array. A cell with no counts (library size 0)
    stays all zeros; its library size is taken as 1, so nothing is divided by zero.
    Each value is computed as ``log1p(x / max(library, 1) * target_sum)`` with the library size
    summed in ``dtype``.
    """
    import scipy.sparse as sp

    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating type, got {dtype}")
    if sp.issparse(counts):
        m = sp.csr_matrix(counts, dtype=dtype, copy=True)
        lib = np.asarray(m.sum(axis=1), dtype=dtype).ravel()
        per_value = np.repeat(np.maximum(lib, dtype.type(1.0)), np.diff(m.indptr))
        m.data = np.log1p(m.data / per_value * dtype.type(target_sum))
        return m
    x = np.asarray(counts).astype(dtype, copy=True)
    if x.ndim != 2:
        raise ValueError(f"counts must be a cells x genes matrix, got shape {x.shape}")
    lib = x.sum(axis=1, keepdims=True)
    return np.log1p(x / np.maximum(lib, 1.0) * target_sum)
