"""Issue 15 #2: every stored count is checked, not a sample of rows.

Row 4,321 (index 4320) of a 4,500-cell matrix is outside the rows the counts finder samples, so
before the fix a NaN, infinite, negative or fractional value there went unseen: training ran at
loss=nan and ``--from-cells`` turned the cell into zeros. Now reading the file, ``get_counts``,
training and perturbing all refuse it, naming the file, the cell, the gene and the count.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.data.io import get_counts, read_dataset, summarize_dataset
from engine.errors import DataError

N_CELLS, N_GENES, BAD_ROW, BAD_COL = 4500, 60, 4320, 7   # the 4,321st cell, the 8th gene
BAD_VALUES = {"nan": (np.nan, "NaN"), "inf": (np.inf, "infinite"), "neg": (-1.0, "negative"),
              "half": (0.5, "non-integer")}


def counts_data(bad: float | None = None, n_cells: int = N_CELLS) -> ad.AnnData:
    rng = np.random.default_rng(1)
    x = rng.poisson(1.0, size=(n_cells, N_GENES)).astype(np.float32)
    if bad is not None:
        x[BAD_ROW, BAD_COL] = bad
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(np.where(np.arange(n_cells) % 2, "T", "B")),
        "perturbation": pd.Categorical(np.where(np.arange(n_cells) % 3, "A", "control")),
        "ptype": pd.Categorical(["CRISPRa"] * n_cells),
    }, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs,
                      var=pd.DataFrame(index=[f"G{j}" for j in range(N_GENES)]))


def assert_names_bad_cell(msg: str, kind: str) -> None:
    assert f"holds {kind} values" in msg
    assert "1 of " in msg and f"1 {kind}" in msg
    assert f"row 4,321 of {N_CELLS:,} (cell 'c{BAD_ROW}')" in msg
    assert f"column {BAD_COL + 1} of {N_GENES} (gene 'G{BAD_COL}')" in msg


def test_bad_row_is_outside_the_sample():
    """Guards the premise: the sampled rows do not include the bad row."""
    from engine.data.io_counts import _SAMPLE_ROWS

    n = N_CELLS
    rows = np.unique(np.concatenate([np.arange(_SAMPLE_ROWS),
                                     np.linspace(0, n - 1, _SAMPLE_ROWS).astype(np.int64)]))
    assert BAD_ROW not in rows


@pytest.mark.parametrize("layout", ["sparse_X", "dense_X", "csc_counts_layer"])
@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_h5ad_with_one_bad_count_is_refused_at_read(tmp_path: Path, bad: str, layout: str):
    value, kind = BAD_VALUES[bad]
    a = counts_data(value)
    if layout == "dense_X":
        a.X = a.X.toarray()
    elif layout == "csc_counts_layer":
        a.layers["counts"] = sp.csc_matrix(a.X)
        a.X = sp.csr_matrix(np.log1p(np.nan_to_num(a.X.toarray(), nan=0, posinf=0, neginf=0)
                                     .clip(0)))
    p = tmp_path / f"bad_{bad}.h5ad"
    a.write_h5ad(p)
    with pytest.raises(DataError) as err:
        read_dataset(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: ")
    where = "layers['counts']" if layout == "csc_counts_layer" else "X"
    assert msg.startswith(f"{p}: {where} holds")
    assert_names_bad_cell(msg, kind)


@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_get_counts_checks_every_row(bad: str):
    value, kind = BAD_VALUES[bad]
    with pytest.raises(DataError) as err:
        get_counts(counts_data(value))
    assert_names_bad_cell(str(err.value), kind)
    with pytest.raises(DataError, match=r"^data\.h5ad: X holds"):
        get_counts(counts_data(value), source="data.h5ad")


def test_clean_counts_still_pass_and_summary_reports_the_bad_cell():
    m, where = get_counts(counts_data(None))
    assert where == "X" and m.shape == (N_CELLS, N_GENES)
    s = summarize_dataset(counts_data(0.5))
    assert s.counts_source is None and "cell 'c4320'" in s.counts_problem


def test_counts_of_each_kind_and_first_bad_value_in_row_order():
    x = np.ones((5000, 50), np.float32)
    x[4999, 0] = np.nan
    x[4400, 49] = -2
    x[4400, 3] = 0.25
    x[4100, 30] = np.inf
    x[4100, 31] = np.inf
    a = ad.AnnData(sp.csc_matrix(x), obs=pd.DataFrame(index=[f"k{i}" for i in range(5000)]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(50)]))
    for fmt in (sp.csc_matrix, sp.csr_matrix, np.asarray):
        a.X = fmt(x)
        with pytest.raises(DataError) as err:
            get_counts(a)
        msg = str(err.value)
        assert "X holds infinite values: 5 of 250,000 stored values" in msg
        assert "(1 NaN, 2 infinite, 1 negative, 1 non-integer)" in msg
        assert "row 4,101 of 5,000 (cell 'k4100'), column 31 of 50 (gene 'g30')" in msg


def test_integer_counts_with_one_negative_value():
    x = np.ones((4500, 5), np.int32)
    x[BAD_ROW, 2] = -3
    a = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(4500)]),
                   var=pd.DataFrame(index=list("ABCDE")))
    with pytest.raises(DataError, match=r"X holds negative values: 1 of 22,500 .*cell 'c4320'"
                                        r".*gene 'C'"):
        get_counts(a)


def test_csv_with_a_fractional_count_in_row_4321_is_refused(tmp_path: Path):
    a = counts_data(0.5)
    x = a.X.toarray()
    p = tmp_path / "cells.csv"
    pd.DataFrame(x, index=a.obs_names, columns=a.var_names).to_csv(p)
    with pytest.raises(DataError) as err:
        read_dataset(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: X holds non-integer values")
    assert_names_bad_cell(msg, "non-integer")


def test_training_refuses_bad_counts_before_training(schema):
    from engine import train_model

    from .conftest import TINY

    with pytest.raises(DataError) as err:
        train_model(counts_data(np.nan), schema, None, device="cpu", **TINY)
    assert_names_bad_cell(str(err.value), "NaN")


def test_perturb_refuses_bad_cells_instead_of_zeroing_them(tiny_model):
    from engine.conditions.spec import Condition

    cells = counts_data(np.inf)
    cond = Condition.parse("T", "A", "CRISPRa", None, None)
    with pytest.raises(DataError) as err:
        tiny_model.perturb(cells, cond, steps=2)
    assert_names_bad_cell(str(err.value), "infinite")
