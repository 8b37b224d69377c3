"""Baseline-anchored generation for a new cell type (issue 14, engine.anchor)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from .conftest import TINY


def _cond(ct, pert="stim"):
    from engine import Condition

    return Condition.parse(ct, pert)


def _means(rows: dict, n=50):
    from engine.anchor import LatentMeans

    conds = tuple(_cond(ct, p) for ct, p in rows)
    return LatentMeans(conds, np.asarray(list(rows.values()), np.float32),
                       np.full(len(rows), n))


def test_delta_is_the_average_effect_in_the_other_cell_types():
    lm = _means({("T", "control"): [0, 0], ("T", "stim"): [2, 0],
                 ("B", "control"): [5, 5], ("B", "stim"): [5, 9],
                 ("NK", "control"): [1, 1]})
    delta, used, w = lm.delta(_cond("NK"))
    assert np.allclose(delta, [1.0, 2.0])                 # mean of (2, 0) and (0, 4)
    assert sorted(c.cell_type for c in used) == ["B", "T"]
    assert np.allclose(w, [0.5, 0.5])
    # the condition's own group never enters its delta (no leak when it was measured)
    delta_t, used_t, _ = lm.delta(_cond("T"))
    assert np.allclose(delta_t, [0.0, 4.0]) and [c.cell_type for c in used_t] == ["B"]
    # nothing measured elsewhere: no anchor
    assert lm.delta(_cond("NK", "other")) is None


def test_kernel_weights_favour_the_cell_type_whose_controls_are_closest():
    lm = _means({("T", "control"): [0, 0], ("T", "stim"): [2, 0],
                 ("B", "control"): [10, 10], ("B", "stim"): [10, 14],
                 ("M", "control"): [20, 20], ("M", "stim"): [20, 26],
                 ("NK", "control"): [1, 0]})
    _, _, uniform = lm.delta(_cond("NK"))
    delta, used, w = lm.delta(_cond("NK"), weights="kernel", tau=0.5)
    order = [c.cell_type for c in used]
    assert np.allclose(uniform, 1 / 3)
    assert w[order.index("T")] > w[order.index("B")] > w[order.index("M")]
    assert np.isclose(w.sum(), 1.0)
    shifts = {"T": [2, 0], "B": [0, 4], "M": [0, 6]}
    assert np.allclose(delta, sum(w[i] * np.asarray(shifts[c]) for i, c in enumerate(order)),
                       atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        lm.delta(_cond("NK"), weights="nearest")


def test_mean_norm_keeps_the_groups_effect_length_and_the_averaged_direction():
    # two effects at right angles: their mean is shorter (sqrt(2)) than either (2)
    lm = _means({("T", "control"): [0, 0], ("T", "stim"): [2, 0],
                 ("B", "control"): [5, 5], ("B", "stim"): [5, 7],
                 ("NK", "control"): [1, 1]})
    mean, _, _ = lm.delta(_cond("NK"))
    kept, used, w = lm.delta(_cond("NK"), magnitude="mean_norm")
    assert np.allclose(mean, [1.0, 1.0])
    assert np.isclose(np.linalg.norm(kept), 2.0)                   # the groups' own length
    assert np.allclose(kept / np.linalg.norm(kept), mean / np.linalg.norm(mean))
    # with kernel weights the length is the weighted mean of the groups' lengths
    lm3 = _means({("T", "control"): [0, 0], ("T", "stim"): [3, 0],
                  ("B", "control"): [9, 9], ("B", "stim"): [9, 10],
                  ("NK", "control"): [1, 0]})
    kept, used, w = lm3.delta(_cond("NK"), weights="kernel", tau=0.5, magnitude="mean_norm")
    lengths = {"T": 3.0, "B": 1.0}
    assert np.isclose(np.linalg.norm(kept),
                      sum(w[i] * lengths[c.cell_type] for i, c in enumerate(used)), atol=1e-5)
    # parallel effects: the mean already has the mean length, nothing changes
    par = _means({("T", "control"): [0, 0], ("T", "stim"): [2, 0],
                  ("B", "control"): [5, 5], ("B", "stim"): [9, 5], ("NK", "control"): [1, 1]})
    assert np.allclose(par.delta(_cond("NK"), magnitude="mean_norm")[0],
                       par.delta(_cond("NK"))[0])
    # a gain lengthens the effect by that factor, direction unchanged
    longer, _, _ = lm.delta(_cond("NK"), magnitude="mean_norm", gain=1.5)
    assert np.allclose(longer, 1.5 * lm.delta(_cond("NK"), magnitude="mean_norm")[0])
    with pytest.raises(ValueError, match="magnitude"):
        lm.delta(_cond("NK"), magnitude="max")


def test_small_groups_do_not_enter_the_delta():
    from engine.anchor import MIN_GROUP_CELLS, LatentMeans

    conds = (_cond("T", "control"), _cond("T", "stim"), _cond("B", "control"),
             _cond("B", "stim"))
    lm = LatentMeans(conds, np.array([[0.0], [1.0], [0.0], [9.0]], np.float32),
                     np.array([50, 50, 50, MIN_GROUP_CELLS - 1]))
    delta, used, _ = lm.delta(_cond("NK"))
    assert np.allclose(delta, [1.0]) and [c.cell_type for c in used] == ["T"]


def test_group_means_match_numpy_and_round_trip():
    from engine.anchor import LatentMeans, latent_group_means

    rng = np.random.default_rng(0)
    mus, libs = rng.normal(size=(100, 3)), rng.normal(5, 1, size=(100, 1))
    codes = rng.integers(0, 3, 100)
    mean, std = np.array([0.1, 0.2, 0.3, 5.0]), np.array([1.0, 2.0, 0.5, 1.5])
    conds = [_cond("T", "control"), _cond("T", "stim"), _cond("B", "stim")]
    lm = latent_group_means(mus, libs, mean, std, codes, conds, chunk=7)
    states = (np.hstack([mus, libs]) - mean) / std
    for g in range(3):
        assert np.allclose(lm.means[g], states[codes == g].mean(0), atol=1e-5)
        assert lm.n_cells[g] == (codes == g).sum()
    back = LatentMeans.from_config(json.loads(json.dumps(lm.to_dict())))
    assert back.conditions == lm.conditions
    assert np.allclose(back.means, lm.means, atol=1e-4)


def _with_rule(folder, tmp_path, rule):
    from engine import PerturbModel

    dest = tmp_path / "anchored"
    shutil.copytree(folder, dest)
    config = json.loads((dest / "config.json").read_text())
    config["sampling"]["anchor"] = rule
    (dest / "config.json").write_text(json.dumps(config))
    return PerturbModel.load(dest, device="cpu")


def test_training_stores_the_group_means(held_out_dir):
    from engine import PerturbModel

    model = PerturbModel.load(held_out_dir, device="cpu")
    lm = model.latent_means
    assert any(c.cell_type == "T" and [p.target for p in c.perturbations] == ["A"]
               for c in lm.conditions)
    assert not any(c.cell_type == "B" and [p.target for p in c.perturbations] == ["A"]
                   for c in lm.conditions)                     # the excluded group
    assert lm.means.shape == (len(lm.conditions), model.latent_dim + 1)
    assert lm.n_cells.sum() == model.config["training"]["n_cells"]
    assert model.anchor_rule is None                              # trained with anchor=False


def test_an_anchored_new_cell_type_starts_from_its_controls(held_out_dir, tmp_path):
    from engine import Condition, PerturbModel

    plain = PerturbModel.load(held_out_dir, device="cpu")
    model = _with_rule(held_out_dir, tmp_path, {"kinds": ["new_cell_type"], "refine": 0.0,
                                                "guidance": 1.0})
    new = model.check_condition(Condition.parse("B", "A", "CRISPRa"))
    measured = model.check_condition(Condition.parse("T", "A", "CRISPRa"))
    assert model.anchor_for(new) is not None and model.anchor_for(measured) is None
    a = model.generate(new, 200, seed=3)
    prov = a.uns["perturb_studio"]["anchor"]
    assert list(prov["conditions"]) == [new.label] and prov["refine"] == 0.0
    assert list(prov["conditions"][new.label]) == [measured.label]
    # the flow alone when asked, and for conditions outside the rule's classes: unchanged
    off = model.generate(new, 200, seed=3, anchor=False)
    ref = plain.generate(new, 200, seed=3)
    assert "anchor" not in off.uns["perturb_studio"]
    assert np.array_equal(off.layers["counts"].toarray(), ref.layers["counts"].toarray())
    assert np.array_equal(model.generate(measured, 50, seed=1).layers["counts"].toarray(),
                          plain.generate(measured, 50, seed=1).layers["counts"].toarray())
    # the anchored cells carry A's effect (genes 10-19 up) on B's identity (genes 5-9 high)
    x = a.layers["counts"].toarray()
    ctrl = plain.generate(new.control(), 200, seed=3).layers["counts"].toarray()
    lib = x.sum(1, keepdims=True)
    lib_c = ctrl.sum(1, keepdims=True)
    up = (x[:, 10:20] / lib).mean() / (ctrl[:, 10:20] / lib_c).mean()
    assert up > 1.5
    t_a = plain.generate(measured, 200, seed=3).layers["counts"].toarray()

    def b_share(m):
        return (m[:, 5:10] / m.sum(1, keepdims=True)).mean()
    assert abs(b_share(x) - b_share(ctrl)) < abs(b_share(x) - b_share(t_a))


def test_perturb_mode_moves_each_cell_by_the_latent_effect(held_out_dir, tmp_path,
                                                           synthetic_session):
    from engine import Condition

    model = _with_rule(held_out_dir, tmp_path, {"kinds": ["new_cell_type"], "refine": 0.3,
                                                "guidance": 2.0, "weights": "kernel",
                                                "magnitude": "mean_norm", "gain": 1.2})
    cells = synthetic_session[(synthetic_session.obs["cell_type"] == "B").to_numpy()
                             & (synthetic_session.obs["perturbation"] == "control").to_numpy()]
    cond = Condition.parse("B", "A", "CRISPRa")
    out = model.perturb(cells, cond, seed=0)
    prov = out.uns["perturb_studio"]["anchor"]
    assert prov["weights"] == "kernel" and prov["refine"] == 0.3 and prov["guidance"] == 2.0
    assert prov["magnitude"] == "mean_norm" and prov["gain"] == 1.2
    assert list(out.obs["source_cell"]) == list(cells.obs_names)
    again = model.perturb(cells, cond, seed=0)
    assert np.array_equal(out.layers["counts"].toarray(), again.layers["counts"].toarray())
    x, x0 = out.layers["counts"].toarray(), cells.layers["counts"].toarray()
    up = (x[:, 10:20] / x.sum(1, keepdims=True)).mean() / \
        (x0[:, 10:20] / x0.sum(1, keepdims=True)).mean()
    assert up > 1.5
    # an explicit guidance is used for the refinement, and recorded as the caller's
    given = model.perturb(cells, cond, seed=0, guidance=1.0)
    assert given.uns["perturb_studio"]["anchor"]["guidance"] is None


@pytest.mark.parametrize("bad, entry", [
    ({"refine": 1.5}, "sampling.anchor.refine"),
    ({"weights": "nearest"}, "sampling.anchor.weights"),
    ({"kinds": ["somewhere"]}, "sampling.anchor.kinds"),
    ({"tau": 0}, "sampling.anchor.tau"),
    ({"match": "counts"}, "sampling.anchor.match"),
    ({"magnitude": "max"}, "sampling.anchor.magnitude"),
    ({"gain": 0}, "sampling.anchor.gain"),
    ({"why": 1}, "sampling.anchor"),
])
def test_a_bad_anchor_rule_is_refused_naming_the_entry(held_out_dir, tmp_path, bad, entry):
    from engine.errors import ModelError

    with pytest.raises(ModelError, match=entry.replace(".", r"\.")):
        _with_rule(held_out_dir, tmp_path, bad)


def test_bad_latent_means_are_refused(held_out_dir, tmp_path):
    from engine import PerturbModel
    from engine.errors import ModelError

    dest = tmp_path / "bad"
    shutil.copytree(held_out_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    config["latent_means"]["mean"][0] = [0.0]
    (dest / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"latent_means\.mean\[0\]"):
        PerturbModel.load(dest, device="cpu")
    config["latent_means"]["mean"][0] = config["latent_means"]["mean"][1]
    config["latent_means"]["conditions"][1]["perturbations"] = [{"type": "CRISPRa"}]
    (dest / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"latent_means\.conditions\[1\]"):
        PerturbModel.load(dest, device="cpu")


def test_a_new_combination_starts_from_the_sum_of_its_singles():
    from engine import Condition

    lm = _means({("T", "control"): [0, 0], ("T", "A"): [2, 0], ("T", "B"): [0, 3],
                 ("NK", "control"): [1, 1], ("NK", "A"): [4, 1]})
    delta, used, w = lm.additive(Condition.parse("T", "A+B"))
    assert np.allclose(delta, [2, 3]) and sorted(c.perturbation_label for c in used) == ["A", "B"]
    assert np.allclose(w, 1)
    assert lm.additive(Condition.parse("NK", "A+B")) is None      # B never measured in NK
    assert lm.additive(Condition.parse("T", "A")) is None         # not a combination


def test_the_model_anchors_a_held_out_double_at_additive(tmp_path, synthetic_session, schema):
    from engine import Condition, train_model

    # A+B never measured together anywhere; a B+C double in B cells keeps doubles in the space
    data = synthetic_session.copy()
    pert = data.obs["perturbation"].astype(str).to_numpy()
    pert[(pert == "A+B") & (data.obs["cell_type"].astype(str) == "B").to_numpy()] = "B+C"
    data.obs["perturbation"] = pert
    out = tmp_path / "m"
    model = train_model(data, schema, out, seed=0, device="cpu",
                        exclude=[{"perturbation": "A+B"}], **TINY)
    cond = Condition.parse("T", "A+B", "CRISPRa")
    assert model.evidence(cond).kind == "new_combination"
    assert model.anchor_for(cond) is None                  # off until chosen for the class
    anchored = _with_rule(out, tmp_path, {"kinds": ["new_combination"]})
    delta, used, _ = anchored.anchor_for(cond)
    lm = anchored.latent_means
    key = {c.perturbation_label: i for i, c in enumerate(lm.conditions) if c.cell_type == "T"}
    expect = lm.means[key["A"]] + lm.means[key["B"]] - 2 * lm.means[key["control"]]
    assert np.allclose(delta, expect, atol=1e-5)
    x = anchored.generate(cond, 200, seed=0).layers["counts"].toarray()
    share = x / x.sum(1, keepdims=True)
    ctrl = anchored.generate(cond.control(), 200, seed=0).layers["counts"].toarray()
    share_c = ctrl / ctrl.sum(1, keepdims=True)
    # both singles' genes go up (A: 10-19, B: 20-29; the tiny 8-d latent space is only
    # roughly additive, so the test asks for the direction, not the size)
    assert share[:, 10:20].mean() > 1.1 * share_c[:, 10:20].mean()
    assert share[:, 20:30].mean() > 1.1 * share_c[:, 20:30].mean()


def test_expression_match_moves_the_decoded_cells_by_the_baseline(held_out_dir, tmp_path,
                                                                  synthetic_session):
    import torch

    from engine import Condition, PerturbModel
    from engine.anchor import match_expression
    from engine.effects import baseline_for

    model = PerturbModel.load(held_out_dir, device="cpu")
    cond = model.check_condition(Condition.parse("B", "A", "CRISPRa"))
    base = baseline_for(model, cond)                   # A's mean effect in the other types
    delta = model.anchor_for(cond) if model.anchor_rule else None
    assert base is not None and delta is None
    delta = model.latent_means.delta(cond)[0]
    cells = synthetic_session[(synthetic_session.obs["cell_type"] == "B").to_numpy()
                              & (synthetic_session.obs["perturbation"] == "control").to_numpy()]
    states = model.encode(cells)
    ae = model.autoencoder
    before = [w.detach().clone() for w in ae.decoder.parameters()]

    def moved_by(shift):              # decoded log1p(1e4 * proportion), mean over the cells
        with torch.no_grad():
            s = torch.as_tensor(states) * model._std + model._mean
            s2 = (torch.as_tensor(states + shift)) * model._std + model._mean
            d = model.latent_dim
            f = lambda z: torch.log1p(1e4 * torch.softmax(ae.decoder(z[:, :d]), -1)).mean(0)  # noqa: E731
            return (f(s2) - f(s)).numpy()

    shift = match_expression(ae, states, delta, base.effect, model._mean, model._std)
    err = lambda sh: float(((moved_by(sh) - base.effect) ** 2).mean())  # noqa: E731
    assert err(shift) < 0.8 * err(delta)
    assert shift[-1] == pytest.approx(delta[-1])          # the library part is kept
    assert all(torch.equal(a, b) for a, b in zip(before, ae.decoder.parameters(), strict=True))
    assert all(w.grad is None for w in ae.decoder.parameters())
    # through the model: the rule's match reaches generation and is recorded
    anchored = _with_rule(held_out_dir, tmp_path, {"kinds": ["new_cell_type"],
                                                   "match": "expression"})
    out = anchored.perturb(cells, cond, seed=0)
    assert out.uns["perturb_studio"]["anchor"]["match"] == "expression"
    latent = _with_rule(held_out_dir, tmp_path / "l", {"kinds": ["new_cell_type"]})
    assert not np.array_equal(out.layers["counts"].toarray(),
                              latent.perturb(cells, cond, seed=0).layers["counts"].toarray())


def test_the_engine_rule_is_the_one_chosen_on_the_kang_folds():
    from pathlib import Path

    from engine.anchor import KANG_RULE

    chosen = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results" /
                         "anchor.json").read_text())["models"]["kang-ifnb-pbmc"]
    mine = KANG_RULE.to_dict()
    assert {k: mine[k] for k in ("kinds", "refine", "guidance", "weights", "tau", "magnitude",
                                      "gain")} == \
        {k: chosen[k] for k in ("kinds", "refine", "guidance", "weights", "tau", "magnitude",
                                      "gain")}


def test_train_anchor_records_the_rule(tmp_path, synthetic_session, schema):
    from engine import train_model
    from engine.anchor import KANG_RULE

    model = train_model(synthetic_session.copy(), schema, None, seed=0, device="cpu",
                        **{**TINY, "flow_steps": 20, "ae_max_steps": 20})
    assert model.anchor_rule == KANG_RULE                         # the default
    off = train_model(synthetic_session.copy(), schema, None, seed=0, device="cpu",
                      anchor=False, **{**TINY, "flow_steps": 20, "ae_max_steps": 20})
    assert off.anchor_rule is None and "anchor" not in off.config["sampling"]
    ddpm = train_model(synthetic_session.copy(), schema, None, seed=0, device="cpu",
                       objective="ddpm", **{**TINY, "flow_steps": 20, "ae_max_steps": 20})
    assert ddpm.anchor_rule is None            # not the default where it lost (DDPM)


@pytest.mark.parametrize("objective", ["rectified_flow", "ddpm"])
def test_refinement_noises_the_start_with_the_models_own_forward_process(held_out_dir,
                                                                         objective):
    """SDEdit must noise the anchored start as the model's objective does (a DDPM model noised
    the rectified-flow way shrank every start towards 0 and lost the effect)."""
    import torch

    from engine import PerturbModel
    from engine.anchor import AnchorRule
    from engine.diffusion.schedules import OBJECTIVES

    model = PerturbModel.load(held_out_dir, device="cpu")
    model.objective = OBJECTIVES[objective]()
    seen = {}

    def capture(xs, c, c_null, g, grid, on_step, cancel, net=None):
        seen["xs"], seen["grid"] = xs, grid
        return xs

    model._integrate = capture
    x = torch.full((20_000, 3), 2.0)
    model._refine(x, (None, None), AnchorRule(refine=0.4), 1.0, 10,
                  torch.Generator().manual_seed(0), None, None)
    t = 0.4 * model.objective.t_max
    if objective == "ddpm":
        ab = model.objective.alpha_bar(t)
        keep, spread = ab ** 0.5, (1 - ab) ** 0.5
    else:
        keep, spread = 1 - t, t
    xs = seen["xs"]
    assert float(xs.mean()) == pytest.approx(2.0 * keep, abs=0.02)
    assert float(xs.std()) == pytest.approx(spread, abs=0.02)
    assert seen["grid"][0] == pytest.approx(t) and all(u < t for u in seen["grid"][1:])


def test_anchor_lines_say_how_the_effect_is_averaged():
    from engine.anchor import KANG_RULE, anchor_lines

    lines = anchor_lines({"sampling": {"anchor": KANG_RULE.to_dict()}})
    assert len(lines) == 1
    assert "kernel weights; its direction averaged, its length the measured effects' mean " \
           "length, x1.15)" in lines[0]
    assert "refined by the flow from time 0.2 at guidance 1" in lines[0]
    assert "(chosen: chosen on Kang" in lines[0]
    plain = anchor_lines({"sampling": {"anchor": {"kinds": ["new_cell_type"]}}})
    assert plain == ["New cell type conditions start from the cell type's control cells plus "
                     "the perturbation's mean latent effect where it was measured (uniform "
                     "weights), not refined by the flow."]
    assert anchor_lines({"sampling": {}}) == []
