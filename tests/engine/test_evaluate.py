"""engine.evaluate and engine.cards on the synthetic data: the metrics, the baselines and the
reference row behave as documented."""

from __future__ import annotations

import re

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


# -- the card code that moved here from build_scripts/train_models.py (issue 9 #5) -------------
A = Condition.make("T", [Perturbation("A", "CRISPRa")])
B_IN_B = Condition.make("B", [Perturbation("B", "CRISPRa")])


def _group_sizes(adata, schema):
    from engine.evaluate import group_key

    codes, uniq = schema.condition_codes(adata)
    return {group_key(c): int((codes == i).sum()) for i, c in enumerate(uniq)}


def test_split_is_deterministic_and_stratified_per_group(synthetic, schema):
    from engine.evaluate import split

    synthetic.obs["perturbation"] = synthetic.obs["perturbation"].astype(str)
    small = np.flatnonzero((synthetic.obs["perturbation"] == "B").to_numpy()
                           & (synthetic.obs["cell_type"] == "B").to_numpy())[:8]
    keep = np.flatnonzero((synthetic.obs["perturbation"] != "B").to_numpy()
                          | (synthetic.obs["cell_type"] != "B").to_numpy())
    data = synthetic[np.sort(np.concatenate([keep, small]))].copy()   # B|B: 8 cells only
    train, test = split(data, schema, frac=0.2, seed=0)
    train2, test2 = split(data, schema, frac=0.2, seed=0)
    assert list(test.obs_names) == list(test2.obs_names)
    assert list(train.obs_names) == list(train2.obs_names)
    assert set(train.obs_names).isdisjoint(test.obs_names)
    assert train.n_obs + test.n_obs == data.n_obs
    held, total = _group_sizes(test, schema), _group_sizes(data, schema)
    from engine.evaluate import group_key

    for key, n in total.items():
        if n < 10:
            assert key not in held                          # too small to hold out from
        else:
            assert held[key] == max(3, round(0.2 * n))      # 8 of every 40-cell group
    assert group_key(B_IN_B) not in held and total[group_key(B_IN_B)] == 8
    other = split(data, schema, frac=0.2, seed=1)[1]
    assert set(other.obs_names) != set(test.obs_names)      # the seed matters


def test_clear_effects_finds_the_planted_effects_and_no_effect_where_none_is(synthetic, schema):
    """A moves genes 10-19, B genes 20-29 (A+B both); 'C' is a relabelled half of the control
    cells: no effect at all."""
    from engine.evaluate import clear_effects, group_key

    obs = synthetic.obs
    obs["perturbation"] = obs["perturbation"].astype(str)
    ctrl = np.flatnonzero((obs["perturbation"] == "control").to_numpy())
    obs.iloc[ctrl[::2], obs.columns.get_loc("perturbation")] = "C"
    n_de = clear_effects(synthetic, schema)
    c_key = group_key(Condition.make("T", [Perturbation("C", "CRISPRa")]))
    assert n_de[c_key] < 3                                   # not a clear effect
    for cond in (A, B_IN_B, AB):       # >= the 10 planted genes (normalisation moves others)
        assert n_de[group_key(cond)] >= 10, (cond.label, n_de[group_key(cond)])
    assert all(k[1] for k in n_de)                           # controls are never counted


def test_evaluate_many_equals_evaluate_per_condition(tiny_model, synthetic, schema):
    from engine.evaluate import evaluate_many

    held, ref = synthetic[::2].copy(), synthetic[1::2].copy()
    conds = [A, AB, B_IN_B]
    many = evaluate_many(tiny_model, held, schema, conds, seed=0, n_cells=200, reference=ref)
    assert len(many) == 3
    for c, r in zip(conds, many, strict=True):
        one = evaluate(tiny_model, held, schema, c, seed=0, n_cells=200, reference=ref)
        assert r.to_dict() == one.to_dict(), c.label
    assert {x["method"] for x in many[1].rows} >= {"model", "control", "real_train",
                                                   "additive", "additive_heldout"}


def test_evaluate_many_skips_groups_with_too_few_cells_or_raises(tiny_model, synthetic, schema):
    from engine import DataError
    from engine.evaluate import evaluate_many

    obs = synthetic.obs
    few_a = np.flatnonzero(((obs["perturbation"] == "A") & (obs["cell_type"] == "T"))
                           .to_numpy())[:3]
    rest = np.flatnonzero(~((obs["perturbation"] == "A") & (obs["cell_type"] == "T"))
                          .to_numpy())
    data = synthetic[np.sort(np.concatenate([few_a, rest]))].copy()
    skipped: list = []
    out = evaluate_many(tiny_model, data, schema, [A, AB], seed=0, n_cells=100, skipped=skipped)
    assert [r.condition for r in out] == [tiny_model.check_condition(AB).to_dict()]
    assert len(skipped) == 1 and skipped[0][0] is A
    assert "need at least 5 real cells of T | A (CRISPRa)" in skipped[0][1]
    assert "found 3 and 40" in skipped[0][1]
    with pytest.raises(DataError, match=re.escape("need at least 5 real cells of T | A (CRISPRa)")):
        evaluate_many(tiny_model, data, schema, [AB, A], seed=0, n_cells=100)


def test_population_scoring_of_a_control_condition(tiny_model, synthetic, schema):
    """An atlas-style population (a control condition) is scored against all other real cells;
    evaluate_many hands control conditions to evaluate_population."""
    from engine.evaluate import evaluate_many, evaluate_population

    pop = Condition.make("T", [])
    r = evaluate_population(tiny_model, synthetic, schema, pop, seed=0, n_cells=200,
                            reference=synthetic)
    assert [x["method"] for x in r.rows] == ["model", "control", "real_train"]
    assert r.n_real == 40 and r.n_control == synthetic.n_obs - 40      # T | control: 40 cells
    assert r.rows[2]["r2_all"] == pytest.approx(1.0)                    # itself, as reference
    assert r.rows[1]["energy_ratio"] == pytest.approx(1.0)
    assert r.condition == pop.to_dict()
    many = evaluate_many(tiny_model, synthetic, schema, [pop], seed=0, n_cells=200,
                         reference=synthetic)
    assert many[0].to_dict() == r.to_dict()


def test_lognorm_is_the_engine_normalisation_in_float64(synthetic):
    import scipy.sparse as sp

    from engine.data.preprocess import log1p_normalize
    from engine.evaluate import lognorm

    x = synthetic.layers["counts"]
    dense = lognorm(x)
    assert dense.dtype == np.float64 and isinstance(dense, np.ndarray)
    raw = x.toarray().astype(np.float64)
    np.testing.assert_array_equal(dense, np.log1p(raw / raw.sum(1, keepdims=True) * 1e4))
    np.testing.assert_allclose(log1p_normalize(x).toarray(), dense, rtol=1e-6, atol=1e-6)
    assert sp.issparse(log1p_normalize(x))


def test_shared_control_cells_correlate_a_baseline_with_the_truth_and_a_split_removes_it():
    """Pure noise, no effect at all: the additive baseline built on the truth's own control
    cells (control subtracted twice) still 'predicts' the real change; with the control cells
    split between the baseline and the truth it does not."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    g = 400
    ctrl, a, b, real = (rng.normal(0, 1, (40, g)) for _ in range(4))
    degs = np.argsort(-np.abs(real.mean(0) - ctrl.mean(0)))[:100]
    pca = PCA(10).fit(np.vstack([ctrl, real]))
    shared = ctrl + (a.mean(0) - ctrl.mean(0)) + (b.mean(0) - ctrl.mean(0))
    assert score(shared, real, ctrl, degs, pca)["pearson_delta_top100"] > 0.4
    c1, c2 = ctrl[:20], ctrl[20:]
    degs2 = np.argsort(-np.abs(real.mean(0) - c2.mean(0)))[:100]
    split = c1 + (a.mean(0) - c1.mean(0)) + (b.mean(0) - c1.mean(0))
    pd_split = score(split, real, c1, degs2, pca, real_ctrl=c2)["pearson_delta_top100"]
    assert abs(pd_split) < 0.25


def test_control_split_keeps_the_truths_half_out_of_every_method(tiny_model, synthetic, schema):
    r0 = evaluate(tiny_model, synthetic, schema, AB, mode="perturb", seed=0, n_cells=300)
    r1 = evaluate(tiny_model, synthetic, schema, AB, mode="perturb", seed=0, n_cells=300,
                  control_split=1)
    assert r1.control_split == 1 and r1.to_dict()["control_split"] == 1
    assert "control_split" not in r0.to_dict() and r0.n_control == r1.n_control
    rows0, rows1 = ({x["method"]: x for x in r.rows} for r in (r0, r1))
    assert set(rows1) == set(rows0)
    # the planted A and B effects add exactly: with independent control halves the additive
    # baseline still predicts the change (the split removes shared noise, not signal), less
    # well than with the shared cells, which also added their noise to both sides
    assert 0.5 < rows1["additive"]["pearson_delta_top100"] < \
        rows0["additive"]["pearson_delta_top100"]
    again = evaluate(tiny_model, synthetic, schema, AB, mode="perturb", seed=0, n_cells=300,
                     control_split=1)
    assert again.rows == r1.rows                    # the split is seeded
    ctrl = (synthetic.obs["cell_type"].astype(str) == "T") & \
        (synthetic.obs["perturbation"].astype(str) == "control")
    with pytest.raises(Exception, match="of its control"):
        evaluate(tiny_model, synthetic[~ctrl.to_numpy() | (np.cumsum(ctrl.to_numpy()) <= 7)],
                 schema, AB, seed=0, n_cells=50, control_split=0)
