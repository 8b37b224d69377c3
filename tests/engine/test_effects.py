"""Ensembles, predicted effects with intervals, baselines, evidence and reference cells
(issue 10). The statistical tests use simulated member effects whose truth is known; the model
tests use the session's tiny ensemble trained on the synthetic dataset."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest

from engine.effects import (
    Z90,
    classify,
    coverage_at,
    coverage_record,
    cross_fitted_coverage,
    fit_scale,
    interval_from_members,
)


# -- the interval, on simulated ensembles with a known truth ------------------------------------
def _simulate(rng, n_cells: int, k: int = 5, genes: int = 400, tau: float = 0.2,
              sd: float = 1.0, bias_sd: float = 0.3, truth_sd: float = 1.0):
    """``k`` members, each off the truth by a member error ~ N(0, tau^2) on top of a shared
    model error ~ N(0, bias_sd^2) per gene, estimated from ``n_cells`` cells each (Monte-Carlo
    noise sd / sqrt(n)). Returns truth, member effects (k, G) and their MC variances."""
    truth = rng.normal(0, truth_sd, genes)
    shared = rng.normal(0, bias_sd, genes)
    members = truth + shared + rng.normal(0, tau, (k, genes))
    mc_var = np.full((k, genes), 2 * sd ** 2 / n_cells)          # condition and control
    members = members + rng.normal(0, 1, (k, genes)) * np.sqrt(mc_var)
    return truth, members, mc_var


def _records(rng, n_cells: int, conditions: int = 8, truth_sd: float = 1.0):
    recs = []
    for _ in range(conditions):
        truth, members, mc = _simulate(rng, n_cells, truth_sd=truth_sd)
        eff, low, high = interval_from_members(members, mc, 1.0)
        recs.append({"miss": np.abs(truth - eff).tolist(), "half1": ((high - low) / 2).tolist(),
                     "se_real": [0.0] * len(truth), "abs_real": np.abs(truth).tolist()})
    return recs


def test_calibrated_interval_covers_the_known_truth_on_new_conditions():
    rng = np.random.default_rng(0)
    scale = fit_scale(_records(rng, 500))             # calibrate on some conditions ...
    fresh = _records(rng, 500)                        # ... and test on others
    cov = coverage_at(fresh, scale, noise_aware=False)["coverage"]
    assert 0.85 <= cov <= 0.95
    # uncalibrated, the member spread alone misses the shared error
    assert coverage_at(fresh, 1.0, noise_aware=False)["coverage"] < 0.7


def test_interval_width_does_not_shrink_with_more_cells():
    def median_width(n_cells):
        rng = np.random.default_rng(1)               # same member errors, more cells
        _, members, mc = _simulate(rng, n_cells)
        _, low, high = interval_from_members(members, mc, 1.0)
        return float(np.median(high - low))

    w1, w2, w16 = median_width(1000), median_width(2000), median_width(16000)
    assert w2 / w1 == pytest.approx(1.0, abs=0.12)
    assert w16 / w1 > 0.8                             # the epistemic part stays
    # a naive interval from the pooled cells (standard error of the mean) would shrink 4x
    assert np.sqrt(2 / 16000) / np.sqrt(2 / 1000) == pytest.approx(0.25)


def test_noise_aware_coverage_allows_for_the_real_effects_own_error():
    rec = {"miss": [1.0, 1.0], "half1": [0.5, 0.5], "se_real": [1.0, 0.0],
           "abs_real": [2.0, 2.0]}
    assert coverage_at([rec], 1.0, noise_aware=False)["coverage"] == 0.0
    assert coverage_at([rec], 1.0, noise_aware=True)["coverage"] == 0.5   # sqrt(.25 + Z90^2)
    # the factor fit_scale picks is the smallest one that reaches the target
    s = fit_scale([rec], target=1.0)
    assert coverage_at([rec], s, noise_aware=True)["coverage"] == 1.0
    assert coverage_at([rec], s * 0.99, noise_aware=True)["coverage"] == 0.5
    assert Z90 == pytest.approx(1.6449, abs=1e-4)


def test_cross_fitted_coverage_reports_held_out_folds():
    rng = np.random.default_rng(2)
    out = cross_fitted_coverage(_records(rng, 500, conditions=10, truth_sd=3.0))
    assert out["conditions"] == 10 and out["folds"] == 2
    assert 0.75 <= out["coverage"] <= 1.0
    assert out["median_width"] < out["median_abs_real"]     # not trivially wide


def test_single_member_has_no_interval():
    eff, low, high = interval_from_members(np.ones((1, 3)), np.zeros((1, 3)), 1.0)
    assert np.all(np.isnan(low)) and np.all(np.isnan(high)) and np.allclose(eff, 1)


# -- evidence classes --------------------------------------------------------------------------
def test_evidence_classes():
    from engine import Condition
    from engine.conditions.spec import ConditionSpace

    def d(ct, *targets):
        return {"cell_type": ct, "perturbations": [{"target": t, "type": "a", "dose": None}
                                                   for t in targets], "context": {}}

    space = ConditionSpace(cell_types=["T", "B"], targets=["A", "B", "C"],
                           perturbation_types=["a"], target_types={t: ["a"] for t in "ABC"},
                           max_perturbations=2,
                           seen=[d("T"), d("B"), d("T", "A"), d("T", "B"), d("B", "A"),
                                 d("B", "C"), d("T", "A", "B")])

    def kind(ct, pert):
        return classify(space, space.complete(Condition.parse(ct, pert, "a")))

    assert kind("T", "A") == "measured"
    assert kind("T", "A+B") == "measured"
    assert kind("T", "control") == "population"
    assert kind("T", "C") == "new_cell_type"              # C measured in B only
    assert kind("B", "A+B") == "new_cell_type"            # the double was measured in T
    assert kind("B", "A+C") == "new_combination"          # both singles measured in B
    assert kind("T", "A+C") == "new_combination_new_cell_type"   # C never measured in T


def test_evidence_expects_the_nested_estimate_where_the_card_has_one():
    """A sampling rule chosen on the folds it was scored on: the fairer (nested) figure is the
    one users are told to expect, and the one compared with the baseline."""
    from engine.effects import _verdict, expected_r2

    score = {"r2_top100": 0.90, "r2_top100_nested": 0.70}
    base = {"name": "mean_shift", "r2_top100": 0.80}
    assert expected_r2(score) == 0.70 and expected_r2({"r2_top100": 0.9}) == 0.9
    assert expected_r2(None) is None
    text = _verdict("new_cell_type", score, base, below=True)
    assert "reached R2 0.70 (0.90 on the folds its sampling rule was chosen on)" in text
    assert "the mean shift baseline 0.80" in text and "prefer it" in text
    plain = _verdict("new_cell_type", {"r2_top100": 0.9}, base, below=False)
    assert "reached R2 0.90, the mean shift" in plain and "chosen on" not in plain


@contextmanager
def _card_row(model, cond, row: dict):
    """``model`` with a card whose evidence row for ``cond``'s class is ``row`` (restored
    after); yields the row, to be edited in place."""
    from engine.effects import evidence_for

    kind, old = evidence_for(model, cond).kind, model.card
    model.card = {"evidence": {kind: row}}
    try:
        yield row
    finally:
        model.card = old


def test_evidence_below_baseline_judged_on_the_nested_estimate(tiny_model):
    from engine import Condition
    from engine.effects import evidence_for

    cond = Condition.parse("T", "A", "CRISPRa")
    with _card_row(tiny_model, cond, {"model": {"r2_top100": 0.9, "r2_top100_nested": 0.7},
                                      "baseline": {"name": "mean_shift",
                                                   "r2_top100": 0.8}}) as row:
        ev = evidence_for(tiny_model, cond)
        assert ev.below_baseline and ev.expected_r2 == 0.7
        assert ev.below_on == ("R2 of the top-100 changed genes",)
        row["model"]["r2_top100_nested"] = 0.85
        assert not evidence_for(tiny_model, cond).below_baseline
        assert evidence_for(tiny_model, cond).below_on == ()
        # a metric the card lists (e.g. Pearson delta with the control cells split) says which
        row["model"]["metrics_below_baseline"] = ["pearson_delta_top100_split"]
        ev = evidence_for(tiny_model, cond)
        assert ev.below_baseline
        assert ev.below_on == ("Pearson delta with control cells not shared",)
        assert ev.to_dict()["below_on"] == list(ev.below_on)


def test_a_baseline_covering_only_some_conditions_is_compared_on_those(tiny_model):
    """Additive exists only for the doubles of a test set of mostly singles: the card row
    keeps the model's score on the baseline's own conditions, and 'below baseline' uses it."""
    from engine import Condition
    from engine.effects import evidence_for, paired_r2

    cond = Condition.parse("T", "A", "CRISPRa")
    with _card_row(tiny_model, cond, {
            "model": {"r2_top100": 0.87, "n": 56},
            "baseline": {"name": "additive", "r2_top100": 0.92, "n": 3,
                         "model_on_same": {"r2_top100": 0.96}}}) as row:
        ev = evidence_for(tiny_model, cond)
        assert not ev.below_baseline and ev.baseline_score["model_r2_on_same"] == 0.96
        assert paired_r2(ev.score, ev.baseline_score) == 0.96
        row["baseline"]["model_on_same"]["r2_top100"] = 0.90
        assert evidence_for(tiny_model, cond).below_baseline
        del row["baseline"]["model_on_same"]
        assert evidence_for(tiny_model, cond).below_baseline      # 0.87 vs 0.92, no pairing


# -- the tiny ensemble ------------------------------------------------------------------------
def test_tiny_model_is_an_ensemble_that_round_trips(tiny_model, tmp_path):
    from engine import Condition, PerturbModel
    from engine.checkpoint import read_weights_header

    assert tiny_model.members == 5
    names = read_weights_header(tiny_model.path / "model.safetensors")[0]
    assert {n.split(".")[1] for n in names if n.startswith("members.")} == set("01234")
    assert not any(n.startswith("net.") for n in names)
    cfg = json.loads((tiny_model.path / "config.json").read_text())
    assert cfg["format_version"] == 3 and cfg["ensemble"]["members"] == 5
    assert len(set(cfg["ensemble"]["seeds"])) == 5
    # members differ (own seed, own bootstrap) but share the autoencoder
    w0 = tiny_model.nets[0].state_dict()
    w1 = tiny_model.nets[1].state_dict()
    assert any(not np.allclose(w0[k].numpy(), w1[k].numpy()) for k in w0)
    out = tiny_model.save(tmp_path / "copy")
    again = PerturbModel.load(out, device="cpu")
    assert again.members == 5 and again.n_reference_cells == tiny_model.n_reference_cells
    cond = Condition.parse("T", "A", "CRISPRa")
    a = tiny_model.generate(cond, 101, seed=4)
    b = again.generate(cond, 101, seed=4)
    assert (a.X != b.X).nnz == 0
    # n / K cells from each member (the first n % K one more)
    assert np.bincount(a.obs["member"].to_numpy()).tolist() == [21, 20, 20, 20, 20]


def test_single_member_training_keeps_the_previous_format(synthetic, schema, tmp_path):
    import torch

    from engine import PerturbModel, train_model
    from engine.checkpoint import read_weights_header

    torch.set_num_threads(2)
    m = train_model(synthetic, schema, tmp_path / "one", seed=0, device="cpu", members=1,
                    ae_max_steps=20, flow_steps=30, latent_dim=4, ae_hidden=16, width=16,
                    depth=1, cond_dim=8)
    cfg = json.loads((m.path / "config.json").read_text())
    assert "ensemble" not in cfg
    names = read_weights_header(m.path / "model.safetensors")[0]
    assert all(n.startswith(("autoencoder.", "net.")) for n in names)
    assert PerturbModel.load(m.path, device="cpu").members == 1


def test_effects_of_the_tiny_ensemble(tiny_model, synthetic, schema):
    from engine import Condition, predict_effects, real_effect

    cond = Condition.parse("T", "A", "CRISPRa")
    res = predict_effects(tiny_model, cond, n=600, seed=1)
    assert res.members == 5 and res.has_interval and res.interval == 0.9
    assert np.all(res.low <= res.effect) and np.all(res.effect <= res.high)
    assert res.evidence.kind == "measured"
    assert res.baseline is not None and res.baseline.name == "mean_shift"   # A measured in B
    # the baseline is the training data's effect of A in B: genes 10-19 go up
    assert res.baseline.effect[10:20].mean() > 0.5
    real = real_effect(tiny_model, synthetic, schema, cond)
    assert real is not None and real.n_cells == 40 and real.effect[10:20].mean() > 0.5
    rec = coverage_record(res, real, top=20)
    assert len(rec["miss"]) == 20
    table = res.table()
    assert list(table.columns[:6]) == ["gene", "log2fc", "low", "high", "members_agree",
                                       "sign_agreement"]
    assert np.allclose(table["log2fc"].abs().to_numpy(),
                       np.sort(np.abs(res.effect))[::-1] / np.log(2))


def test_double_gets_the_additive_baseline(tiny_model):
    from engine import Condition, predict_effects

    res = predict_effects(tiny_model, Condition.parse("B", "A+B", "CRISPRa"), n=300, seed=0)
    assert res.baseline.name == "additive"
    stats = tiny_model.group_stats()
    single_a = stats.effect(tiny_model.check_condition(Condition.parse("B", "A", "CRISPRa")))
    single_b = stats.effect(tiny_model.check_condition(Condition.parse("B", "B", "CRISPRa")))
    assert np.allclose(res.baseline.effect, single_a + single_b)


def test_effect_width_nearly_unchanged_when_doubling_cells(tiny_model):
    from engine import Condition, predict_effects

    cond = Condition.parse("T", "A+B", "CRISPRa")
    w1 = np.median(predict_effects(tiny_model, cond, n=2000, seed=0).width)
    w2 = np.median(predict_effects(tiny_model, cond, n=4000, seed=0).width)
    assert 0.75 < w2 / w1 < 1.25


def test_reference_cells(tiny_model, synthetic_session):
    ref = tiny_model.reference_cells()
    assert ref is not None and ref.n_obs == tiny_model.n_reference_cells
    assert ref.n_obs <= 2000 and ref.n_vars == len(tiny_model.genes)
    # stratified: every training condition group is there
    assert set(ref.obs["condition"].astype(str)) == {
        c.label for c in tiny_model.reference.groups}
    assert (ref.layers["counts"].data >= 0).all()


def test_damaged_reference_is_refused(tiny_model_dir, tmp_path):
    import shutil

    from engine import PerturbModel
    from engine.errors import ModelError

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, folder)
    raw = bytearray((folder / "reference.safetensors").read_bytes())
    raw[-8:] = b"\xff" * 8
    (folder / "reference.safetensors").write_bytes(bytes(raw))
    model = PerturbModel.load(folder, device="cpu")          # generation still works
    with pytest.raises(ModelError, match="reference"):
        _ = model.reference


def test_cli_effects_json_and_models_json(tiny_model_dir, capsys):
    from engine.cli import main

    assert main(["effects", "--model", str(tiny_model_dir), "--cell-type", "T",
                 "--perturbation", "A+B", "--perturbation-type", "CRISPRa", "-n", "200",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("genes", "effect", "low", "high", "interval", "baseline", "verdict"):
        assert key in out
    assert out["interval"] == 0.9 and out["baseline"]["name"] == "additive"
    assert len(out["effect"]) == len(out["genes"]) == len(out["low"])
    assert isinstance(out["verdict"], str) and out["verdict"]
    assert main(["effects", "--model", str(tiny_model_dir), "--cell-type", "T",
                 "--perturbation", "control"]) == 2
    assert "give --perturbation" in capsys.readouterr().err


def test_effects_of_perturbed_cells(tiny_model, synthetic, schema):
    from engine import Condition, effects_from_perturbed

    src = synthetic[(synthetic.obs["cell_type"] == "T").to_numpy()
                    & (synthetic.obs["perturbation"] == "control").to_numpy()].copy()
    cond = Condition.parse("T", "B", "CRISPRa")
    out = tiny_model.perturb(src, cond, seed=0)
    assert np.bincount(out.obs["member"].to_numpy()).tolist() == [8] * 5   # round robin
    res = effects_from_perturbed(tiny_model, out, src, cond)
    assert res.members == 5 and res.has_interval and res.extra["mode"] == "perturb"
    assert res.effect.shape == (len(tiny_model.genes),)
    assert np.all(res.low <= res.high)
