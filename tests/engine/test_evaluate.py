"""engine.evaluate and engine.cards on the synthetic data: the metrics, the baselines and the
reference row behave as documented."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Condition, Perturbation
from engine.cards import summarise, verdicts
from engine.evaluate import energy_distance, evaluate, score

AB = Condition.make("T", [Perturbation("A", "CRISPRa"), Perturbation("B", "CRISPRa")])


def test_energy_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    x = np.random.default_rng(0).normal(size=(200, 5))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    near, far = energy_distance(x, x + 0.2), energy_distance(x, x + 2.0)
    assert 0 < near < far


def test_score_compares_equal_numbers_of_cells():
    """A prediction drawn from the control distribution scores about 1 on the energy ratio
    however many cells it has: the estimator's small-sample bias is the same on both sides."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    ctrl = rng.normal(0, 1, (40, 20))
    real = rng.normal(0.5, 1, (40, 20))
    pred_many = rng.normal(0, 1, (4000, 20))         # same distribution as the control cells
    degs = np.arange(20)
    pca = PCA(10).fit(np.vstack([ctrl, real]))
    r = score(pred_many, real, ctrl, degs, pca)
    assert 0.6 < r["energy_ratio"] < 1.4, r
    assert score(ctrl, real, ctrl, degs, pca)["energy_ratio"] == pytest.approx(1.0)


def test_reference_row_and_baselines_from_the_reference(tiny_model, synthetic, schema):
    """With the evaluation cells themselves as reference, 'real_train' is a perfect prediction
    (r2 1, energy 0), and the additive baseline is built from the reference's singles."""
    r = evaluate(tiny_model, synthetic, schema, AB, seed=0, n_cells=300,
                 reference=synthetic)
    rows = {x["method"]: x for x in r.rows}
    assert set(rows) >= {"model", "control", "real_train", "additive", "mean_shift"}
    assert rows["real_train"]["r2_top100"] == pytest.approx(1.0)
    assert rows["real_train"]["energy_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert rows["control"]["energy_ratio"] == pytest.approx(1.0)
    # in the synthetic data the A and B effects add exactly: additive predicts the change well
    assert rows["additive"]["pearson_delta_top100"] > 0.9

    # half the cells as reference for the other half: a different sample of the same truth
    held, ref = synthetic[::2].copy(), synthetic[1::2].copy()
    r2 = evaluate(tiny_model, held, schema, AB, seed=0, n_cells=300, reference=ref)
    rows2 = {x["method"]: x for x in r2.rows}
    assert 0.8 < rows2["real_train"]["r2_top100"] < 1.0
    assert rows2["real_train"]["energy_ratio"] < 0.5
    assert rows2["additive"]["pearson_delta_top100"] != rows["additive"]["pearson_delta_top100"]


def test_cards_call_the_reference_a_ceiling_not_a_baseline(tiny_model, synthetic, schema):
    r = evaluate(tiny_model, synthetic, schema, AB, seed=0, n_cells=300, reference=synthetic)
    lines = verdicts(summarise([r.to_dict()]))
    ref = [v for v in lines if "real_train" in v or "real training cells" in v]
    assert len(ref) == 1 and "not a baseline" in ref[0]
    assert not any("beats real_train" in v for v in lines)


def test_cards_count_conditions_whose_energy_ratio_is_above_one():
    from engine.cards import _energy_lines

    def res(model, ref):
        return {"rows": [{"method": "model", "energy_ratio": model},
                         {"method": "control", "energy_ratio": 1.0},
                         {"method": "real_train", "energy_ratio": ref}]}
    lines = _energy_lines([res(1.3, 1.2), res(1.1, 0.5), res(0.4, 0.3), res(0.9, 1.4)])
    assert "for 2 of 4 conditions" in lines[-1]
    assert "above 1 for 2 (1 of them the same conditions)" in lines[-1]
    assert _energy_lines([res(0.5, 0.4)]) == []
