"""Model behaviour on a tiny synthetic dataset: round trip, determinism, both generation
modes, cancellation, refusal of unknown conditions, and the NB sampler's statistics."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from engine import (
    Cancelled,
    Condition,
    ConditionError,
    DataError,
    ModelError,
    Perturbation,
    PerturbModel,
    PerturbStudioError,
    ResourceError,
)


def cond(ct="T", pert="A"):
    return Condition.parse(ct, pert, "CRISPRa")


def test_generate_output_format(tiny_model):
    a = tiny_model.generate(cond(), 50, seed=0)
    assert a.shape == (50, len(tiny_model.genes))
    counts = a.layers["counts"]
    assert sp.issparse(counts) and np.issubdtype(counts.dtype, np.integer)
    assert counts.sum() > 0
    # X is log1p(normalize_total 1e4) of the counts
    c = counts.toarray().astype(float)
    expect = np.log1p(c / c.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(a.X.toarray(), expect, rtol=1e-5, atol=1e-5)
    assert a.X.dtype == np.float32
    assert list(a.var_names) == tiny_model.genes
    assert set(a.obs["cell_type"]) == {"T"} and set(a.obs["perturbation"]) == {"A"}
    assert set(a.obs["perturbation_type"]) == {"CRISPRa"}
    prov = a.uns["perturb_studio"]
    assert prov["seed"] == 0 and prov["mode"] == "denovo" and len(prov["weights_sha256"]) == 64
    assert json.loads(prov["conditions_json"])[0]["cell_type"] == "T"


def test_same_seed_same_cells_and_different_seed_differs(tiny_model):
    a = tiny_model.generate(cond(), 64, seed=3).layers["counts"].toarray()
    b = tiny_model.generate(cond(), 64, seed=3).layers["counts"].toarray()
    c = tiny_model.generate(cond(), 64, seed=4).layers["counts"].toarray()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_save_load_round_trip_gives_identical_samples(tiny_model, tmp_path):
    before = tiny_model.generate(cond("B", "A+B"), 32, seed=1).layers["counts"].toarray()
    tiny_model.save(tmp_path / "copy")
    again = PerturbModel.load(tmp_path / "copy", device="cpu")
    after = again.generate(cond("B", "A+B"), 32, seed=1).layers["counts"].toarray()
    np.testing.assert_array_equal(before, after)
    assert again.genes == tiny_model.genes


def test_gene_cell_dispersion_trains_saves_and_loads(synthetic, schema, tmp_path):
    """The optional per-cell dispersion head: trains, round-trips through the checkpoint, and
    generates the known effect; old configs without the key still mean one value per gene."""
    import torch

    from engine import train_model

    from .conftest import TINY

    torch.set_num_threads(2)
    m = train_model(synthetic.copy(), schema, tmp_path / "gc", seed=0, device="cpu",
                    **{**TINY, "dispersion": "gene-cell"})
    assert m.config["architecture"]["dispersion"] == "gene-cell"
    again = PerturbModel.load(tmp_path / "gc", device="cpu")
    assert "autoencoder.theta_head.weight" in again.state_dict()
    a = m.generate(cond("T", "A"), 200, seed=3).layers["counts"].toarray()
    b = again.generate(cond("T", "A"), 200, seed=3).layers["counts"].toarray()
    np.testing.assert_array_equal(a, b)
    ctrl = again.generate(cond("T", "control"), 200, seed=3).layers["counts"].toarray()
    up = a[:, 10:20].mean() / ctrl[:, 10:20].mean()          # A raises genes 10-19 ~5-fold
    other = a[:, 30:].mean() / ctrl[:, 30:].mean()
    assert up > 1.25 and abs(np.log(other)) < np.log(up) / 3, (up, other)
    with pytest.raises(ValueError, match="dispersion"):
        train_model(synthetic.copy(), schema, None, seed=0, device="cpu",
                    **{**TINY, "dispersion": "per-batch"})


def test_generated_effect_has_the_right_direction(tiny_model):
    ctrl = tiny_model.generate(cond("T", "control"), 300, seed=0).X.toarray()
    pert = tiny_model.generate(cond("T", "A"), 300, seed=0).X.toarray()
    up = pert[:, 10:20].mean() - ctrl[:, 10:20].mean()
    other = pert[:, 30:].mean() - ctrl[:, 30:].mean()
    assert up > 0.5, up                      # A raises genes 10-19 ~5-fold in the data
    assert abs(other) < up / 3


def test_generate_many_adds_matching_controls(tiny_model):
    a = tiny_model.generate_many([cond("T", "A"), cond("T", "B")], 20, seed=0)
    assert a.n_obs == 60
    assert a.obs["is_control"].sum() == 20
    assert set(a.obs["perturbation"]) == {"A", "B", "control"}


def test_perturb_mode_keeps_identity(tiny_model, synthetic):
    cells = synthetic[(synthetic.obs.cell_type == "T")
                      & (synthetic.obs.perturbation == "control")].copy()
    out = tiny_model.perturb(cells, cond("T", "A"), seed=0)
    assert out.n_obs == cells.n_obs
    assert list(out.obs["source_cell"]) == list(cells.obs_names)
    x_in = tiny_model.encode(cells)
    x_out = tiny_model.encode(out)
    # each perturbed cell is closer (in latent space) to its own source than to a random other
    d_own = np.linalg.norm(x_in - x_out, axis=1).mean()
    d_other = np.linalg.norm(x_in - np.roll(x_out, 7, axis=0), axis=1).mean()
    assert d_own < d_other
    ctrl_x = cells.X.toarray()
    gain = np.log1p(out.layers["counts"].toarray()[:, 10:20]).mean() - \
        np.log1p(ctrl_x[:, 10:20]).mean()
    assert gain > 0.3


def test_synthetic_fixture_is_a_fresh_copy_per_test(synthetic, synthetic_session):
    """Editing the fixture's cells in one test must not leak into the session's dataset."""
    assert synthetic is not synthetic_session
    synthetic.var_names = [f"X{i}" for i in range(synthetic.n_vars)]
    synthetic.obs["perturbation"] = "control"
    synthetic.layers["counts"].data[:] = 0
    assert synthetic_session.var_names[0] == "G0"
    assert set(synthetic_session.obs["perturbation"]) == {"control", "A", "B", "A+B"}
    assert synthetic_session.layers["counts"].sum() > 0


def test_perturb_refuses_cells_without_model_genes(tiny_model, synthetic):
    cells = synthetic[:10].copy()
    cells.var_names = [f"X{i}" for i in range(cells.n_vars)]
    with pytest.raises(DataError, match="0 of 60 model genes found in the data"):
        tiny_model.perturb(cells, cond(), seed=0)


def test_cancel_between_steps_raises_and_returns_nothing(tiny_model):
    stop = threading.Event()
    seen = []

    def progress(p):
        seen.append(p.done)
        if len(seen) == 2:
            stop.set()

    with pytest.raises(Cancelled):
        tiny_model.generate(cond(), 5000, seed=0, progress=progress, cancel=stop)
    assert len(seen) <= 3


@pytest.mark.parametrize("bad, match", [
    (Condition.parse("Q", "A", "CRISPRa"), "cell type 'Q'"),
    (Condition.parse("T", "TP53", "CRISPRa"), "TP53 was never perturbed"),
    (Condition.parse("T", "A", "CRISPRi"), "perturbation type 'CRISPRi'"),
    (Condition.parse("T", "A+B+A", "CRISPRa"), "at most 2"),
])
def test_unknown_conditions_are_refused_with_reason(tiny_model, bad, match):
    with pytest.raises(ConditionError, match=match):
        tiny_model.generate(bad, 5)


def test_dose_refused_when_model_has_no_dose(tiny_model):
    with pytest.raises(ConditionError, match="no dose"):
        tiny_model.generate(Condition.make("T", [Perturbation("A", "CRISPRa", 2.0)]), 5)


def test_negative_dose_is_refused():
    with pytest.raises(ConditionError, match=">= 0"):
        Condition.parse("T", "A", dose="-1")


def test_bad_sizes_are_refused(tiny_model):
    with pytest.raises(PerturbStudioError, match="number of cells must be at least 1, got 0"):
        tiny_model.generate(cond(), 0)
    with pytest.raises(ResourceError):
        tiny_model.generate(cond(), 10**9)
    with pytest.raises(PerturbStudioError, match="guidance must be a number between 0 and 20"):
        tiny_model.generate(cond(), 5, guidance=float("nan"))


def test_set_condition_order_does_not_matter(tiny_model):
    ab = tiny_model.generate(Condition.parse("T", "A+B", "CRISPRa"), 16, seed=2)
    ba = tiny_model.generate(Condition.parse("T", "B+A", "CRISPRa"), 16, seed=2)
    np.testing.assert_array_equal(ab.layers["counts"].toarray(), ba.layers["counts"].toarray())


def test_load_rejects_corrupt_folders(tiny_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.raises(ModelError, match="safetensors"):
        PerturbModel.load(bad)
    shutil.rmtree(bad)
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["genes"] = cfg["genes"][:-1]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="shape"):
        PerturbModel.load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        PerturbModel.load(bad)
    with pytest.raises(ModelError, match="no model named"):
        PerturbModel.load("no-such-model-anywhere")


def test_nb_sampler_matches_nb_moments():
    import torch

    from engine.models.autoencoder import sample_nb

    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.05, 0.5, 3.0, 40.0, 200.0])
    theta = torch.tensor([0.5, 2.0, 1.0, 5.0, 0.3])
    n = 40000
    log_mu = mu.log().expand(n, -1).contiguous()
    idx, val = sample_nb(log_mu, theta.log(), g, max_iter=20)
    dense = np.zeros(n * 5)
    dense[idx.numpy()] = val.numpy()
    dense = dense.reshape(n, 5)
    m, v = dense.mean(0), dense.var(0)
    exp_v = (mu + mu ** 2 / theta).numpy()
    np.testing.assert_allclose(m, mu.numpy(), rtol=0.06)
    np.testing.assert_allclose(v, exp_v, rtol=0.15)
