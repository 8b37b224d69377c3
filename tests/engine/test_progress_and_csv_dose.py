"""Issue 11: the first progress tick reports no absurd rate; a double's CSV dose is empty."""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def test_first_tick_has_no_rate_then_a_plausible_one():
    from engine.progress import MIN_RATE_SECONDS, Reporter

    got = []
    rep = Reporter(got.append, 1000, "sampling")
    rep(500)                          # microseconds after the start
    assert got[0].rate is None and got[0].eta_s is None
    time.sleep(MIN_RATE_SECONDS + 0.05)
    rep(600)
    assert got[1].rate is not None and got[1].rate < 600 / MIN_RATE_SECONDS
    assert got[1].eta_s is not None and got[1].eta_s > 0


def test_csv_of_a_double_has_an_empty_dose(tmp_path):
    from engine.export import write_csv

    obs = pd.DataFrame({"condition": ["k562 | A + B", "k562 | X @ 2", "k562 | control"],
                        "perturbation": ["A+B", "X", "control"],
                        "dose": pd.Categorical(["+", "2", ""])},
                       index=["c0", "c1", "c2"])
    a = ad.AnnData(sp.csr_matrix(np.ones((3, 2), np.float32)), obs=obs,
                   var=pd.DataFrame(index=["g1", "g2"]))
    a.layers["counts"] = a.X.copy()
    write_csv(a, tmp_path / "x.csv")
    back = pd.read_csv(tmp_path / "x.csv", keep_default_na=False, dtype=str)
    assert back["dose"].tolist() == ["", "2", ""]
    assert back["perturbation"].tolist() == ["A+B", "X", "control"]
