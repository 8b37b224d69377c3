"""End to end on the real Kang 2018 file: train (one group held out) -> generate -> evaluate."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from engine import Condition, PerturbModel, Schema, train_model
from engine.evaluate import evaluate


@pytest.fixture(scope="module")
def kang(data_dir):
    a = ad.read_h5ad(data_dir / "kang2018_ifnb_pbmc_train.h5ad")
    a.obs["organism"] = "human"
    a.obs["tissue"] = "blood"
    return a


def test_kang_train_generate_evaluate(kang, tmp_path):
    import torch

    torch.set_num_threads(2)
    schema = Schema(cell_type_key="cell_type", perturbation_key="condition",
                    context_keys=("organism", "tissue"), control_label="control")
    out = tmp_path / "kang-small"
    train_model(kang, schema, out, seed=0, device="cpu", ae_max_steps=300, flow_steps=1500,
                members=1, exclude=[{"cell_type": "NK", "condition": "stimulated"}])
    model = PerturbModel.load(out)
    assert model.space.cell_types == sorted(kang.obs["cell_type"].unique())
    held_out = Condition.parse("NK", "stimulated")
    assert not model.space.is_seen(held_out)
    g = model.generate(held_out, 300, seed=0)
    assert g.n_obs == 300 and g.layers["counts"].sum() > 0
    for mode in ("denovo", "perturb"):
        r = evaluate(model, kang, schema, held_out, mode=mode, seed=0)
        m, ctrl = r.row("model"), r.row("control")
        assert r.row("mean_shift") is not None
        assert ctrl["energy_ratio"] == pytest.approx(1.0)
        # even a short training run must move cells towards the real stimulated NK cells
        assert m["energy_ratio"] < 1.0, r.table()
        assert m["pearson_delta_top100"] > 0.6, r.table()
        assert m["r2_top100"] > ctrl["r2_top100"], r.table()
        assert np.isfinite(m["r2_top100"])
