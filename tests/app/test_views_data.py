"""app.views on hand-made experiments with a known answer (no model): dose-response curves,
the combination grid's additivity, the ranked singles, gene parsing and group order."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

LN2 = math.log(2)


def _experiment(effects: dict, n: int = 20, genes: int = 6):
    """Cells of each condition (label -> (Condition, effect per gene in log1p units)) and of
    their control T | control, with X = log1p expression exactly control + effect."""
    import engine
    from app.experiment import Experiment

    rows, obs = [], []
    base = np.full(genes, 1.0)
    for label, (_cond, eff) in {"T | control": (None, np.zeros(genes)), **effects}.items():
        rows.append(np.tile(base + eff, (n, 1)))
        obs += [{"condition": label, "cell_type": "T",
                 "is_control": label == "T | control"}] * n
    obs = pd.DataFrame(obs, index=[f"c{i}" for i in range(len(obs))])
    a = ad.AnnData(sp.csr_matrix(np.vstack(rows).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=[f"G{i}" for i in range(genes)]))
    conds = [c for c, _e in effects.values()]
    for c, label in zip(conds, effects, strict=True):
        assert c.label == label
    assert all(isinstance(c, engine.Condition) for c in conds)
    return Experiment.from_generated(a, model_name="toy", conditions=conds)


def _c(*parts, dose=None):
    import engine

    return engine.Condition.make("T", [engine.Perturbation(p, None, dose) for p in parts])


def test_dose_series_curves_are_the_effects_at_each_dose():
    from app.views import build_view, dose_series

    effects = {}
    for d in (0.1, 1.0, 10.0):
        c = _c("X", dose=d)
        e = np.zeros(6)
        e[0] = math.log10(d) + 2          # 1, 2, 3 at the three doses
        effects[c.label] = (c, e)
    exp = _experiment(effects)
    series = dose_series(exp)
    assert len(series) == 1 and [d for d, _ in series[0][1]] == [0.1, 1.0, 10.0]
    res = build_view("sweep", exp, {"genes": ["G0"]})
    assert res.data["simulated"] is True         # no model: never claimed as measured
    assert np.allclose(res.data["curves"]["G0"], np.array([1, 2, 3]) / LN2, atol=1e-5)
    assert "SIMULATED" in res.figure.axes[0].get_title()
    assert res.figure.axes[0].get_xscale() == "log"


def test_combination_grid_measures_deviation_from_additivity():
    from app.views import build_view, pair_grid

    a, b, ab = np.zeros(6), np.zeros(6), np.zeros(6)
    a[0], b[1] = 1.0, 2.0
    ab[0], ab[1], ab[2] = 1.0, 2.0, 3.0        # additive on G0, G1; G2 is an interaction
    ca, cb, cab = _c("A"), _c("B"), _c("A", "B")
    exp = _experiment({ca.label: (ca, a), cb.label: (cb, b), cab.label: (cab, ab)})
    targets, size, dev = pair_grid(exp)
    assert targets == ["A", "B"]
    assert dev[0, 1] == pytest.approx(np.sqrt(9 / 6) / LN2, rel=1e-4)
    assert size[0, 0] == pytest.approx(np.sqrt(1 / 6) / LN2, rel=1e-4)
    res = build_view("compare", exp, {"label": cab.label})
    assert res.data["outliers"][0] == "G2"       # the interaction gene is named first
    assert res.data["additive_source"] == "sum of the generated singles"
    assert np.allclose(res.data["additive"], (a + b) / LN2, atol=1e-5)


def test_singles_ranked_and_gene_parsing_and_group_order():
    from app.views import build_view, group_order, parse_genes

    e1, e2 = np.zeros(6), np.zeros(6)
    e1[0], e2[0] = 1.0, 3.0
    c1, c2 = _c("A"), _c("B")
    exp = _experiment({c1.label: (c1, e1), c2.label: (c2, e2)})
    res = build_view("sweep", exp, {})
    assert list(res.data["sizes"]) == [c1.label, c2.label]
    assert res.data["sizes"][c2.label] > res.data["sizes"][c1.label]
    assert group_order(exp) == [c1.label, "T | control", c2.label]
    assert parse_genes("g1, G3;nope  g1", exp.adata.var_names) == (["G1", "G3"], ["nope"])


def test_perturb_mode_views_show_the_cells_before_and_after():
    from app.experiment import Experiment
    from app.views import BEFORE, build_view, cells_for_views

    genes = [f"G{i}" for i in range(4)]
    after = ad.AnnData(sp.csr_matrix(np.full((5, 4), 2.0, np.float32)),
                       obs=pd.DataFrame({"condition": ["T | A"] * 5},
                                        index=[f"a{i}" for i in range(5)]),
                       var=pd.DataFrame(index=genes))
    # the user's cells: raw counts, one gene (G3) missing, one extra gene
    src = ad.AnnData(sp.csr_matrix(np.array([[10, 0, 5, 7]] * 3, np.float32)),
                     obs=pd.DataFrame(index=[f"s{i}" for i in range(3)]),
                     var=pd.DataFrame(index=["G0", "G1", "G2", "OTHER"]))
    exp = Experiment.from_perturbed(after, src, model_name="toy")
    cells = cells_for_views(exp)
    assert list(cells.var_names) == genes and cells.n_obs == 8
    before = cells[cells.obs["condition"] == BEFORE]
    x = before.X.toarray()
    # normalised over the model's genes, as engine.effects_from_perturbed does
    assert np.allclose(x[:, 3], 0) and np.allclose(x[:, 0], np.log1p(10 / 15 * 1e4), rtol=1e-4)
    res = build_view("dotplot", exp, {"genes": genes})
    assert res.data["groups"][0] == BEFORE
    labels = {t.get_text() for ax in res.figure.axes for t in ax.get_yticklabels()}
    assert {BEFORE, "T | A"} <= labels
