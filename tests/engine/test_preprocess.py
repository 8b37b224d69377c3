"""engine.data.preprocess.log1p_normalize: the one log1p-normalisation (issue 9 #4)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from engine.data.preprocess import log1p_normalize

COUNTS = np.array([[1, 0, 3], [0, 0, 0], [10, 5, 5]], dtype=np.int64)


def test_dense_and_sparse_agree_in_float32_and_leave_the_input_alone():
    dense = log1p_normalize(COUNTS)
    sparse = log1p_normalize(sp.csr_matrix(COUNTS))
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32
    assert sp.isspmatrix_csr(sparse) and sparse.dtype == np.float32
    np.testing.assert_allclose(sparse.toarray(), dense, rtol=1e-6)
    expect = np.log1p(COUNTS / np.maximum(COUNTS.sum(1, keepdims=True), 1) * 1e4)
    np.testing.assert_allclose(dense, expect, rtol=1e-6)
    assert (dense[1] == 0).all()                      # an empty cell stays zeros, no NaN
    assert COUNTS[0, 2] == 3                          # input unchanged


def test_float64_and_target_sum_and_scanpy():
    import anndata as ad
    import scanpy as sc

    x = log1p_normalize(COUNTS, target_sum=100.0, dtype=np.float64)
    assert x.dtype == np.float64
    assert x[0, 2] == pytest.approx(np.log1p(3 / 4 * 100))
    a = ad.AnnData(COUNTS[[0, 2]].astype(np.float32))
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    np.testing.assert_allclose(log1p_normalize(COUNTS[[0, 2]]), a.X, rtol=1e-5)


def test_integer_dtype_is_refused():
    with pytest.raises(TypeError, match="dtype must be a floating type"):
        log1p_normalize(COUNTS, dtype=np.int32)
