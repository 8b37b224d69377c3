"""Engine fixtures: a small seeded synthetic perturbation dataset (built once per session, each test
gets its own copy) and a tiny model trained on it once per session (seconds), handed out
read-only."""

from __future__ import annotations

import numpy as np
import pytest

N_GENES = 60


def make_synthetic(seed: int = 0, n_per: int = 40, dose: bool = False):
    """Two cell types x {control, A, B, A+B} with known effects on known genes.

    Gene 0-9 are cell-type markers, gene 10-19 go up under A, 20-29 go up under B (effects add
    for A+B). With ``dose``, A's effect scales with log1p(dose) (doses 0.1, 1, 10)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows, obs = [], []
    base = rng.gamma(2.0, 0.5, N_GENES)
    for ct_i, ct in enumerate(["T", "B"]):
        conds = [("control", 1.0), ("A", 1.0), ("B", 1.0), ("A+B", 1.0)]
        if dose:
            conds = [("control", 1.0)] + [("A", d) for d in (0.1, 1.0, 10.0)]
        for pert, d in conds:
            mu = base.copy()
            mu[ct_i * 5:(ct_i + 1) * 5] *= 6.0
            scale = np.log1p(d) / np.log1p(1.0) if dose else 1.0
            if "A" in pert:
                mu[10:20] *= 1 + 4.0 * scale
            if "B" in pert.split("+"):
                mu[20:30] *= 5.0
            lib = rng.lognormal(np.log(300), 0.2, n_per)
            p = mu / mu.sum()
            lam = rng.gamma(5.0, (lib[:, None] * p) / 5.0)
            rows.append(rng.poisson(lam))
            obs += [{"cell_type": ct, "perturbation": pert, "ptype": "CRISPRa",
                     "dose": d} for _ in range(n_per)]
    X = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame(obs)
    obs.index = [f"c{i}" for i in range(len(obs))]
    for c in ("cell_type", "perturbation", "ptype"):
        obs[c] = obs[c].astype("category")
    a = ad.AnnData(sp.csr_matrix(X), obs=obs,
                   var=pd.DataFrame(index=[f"G{i}" for i in range(N_GENES)]))
    a.layers["counts"] = a.X.copy()
    return a


# single-member by default, to keep the suite fast: the session's tiny_model is the ensemble
# (TINY_ENSEMBLE) every generation, export and hostile-input test then runs through
TINY = dict(ae_max_steps=150, flow_steps=300, latent_dim=8, ae_hidden=64, width=64, depth=2,
            cond_dim=32, steps=8, members=1)
TINY_ENSEMBLE = {**TINY, "members": 5}


@pytest.fixture(scope="session")
def synthetic_session():
    """The dataset built once; use :func:`synthetic` in tests (this object must not change)."""
    return make_synthetic()


@pytest.fixture()
def synthetic(synthetic_session):
    """A fresh copy of the session's dataset for each test: a test that edits it (obs, layers,
    var_names) cannot change what the next test sees."""
    return synthetic_session.copy()


@pytest.fixture(scope="session")
def schema():
    from engine import Schema

    return Schema(cell_type_key="cell_type", perturbation_key="perturbation",
                  perturbation_type_key="ptype", control_label="control")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_session, schema):
    import torch

    from engine import train_model

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("models") / "tiny"
    train_model(synthetic_session.copy(), schema, out, seed=0, device="cpu", **TINY_ENSEMBLE)
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from engine import PerturbModel

    return PerturbModel.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def held_out_dir(tmp_path_factory, synthetic_session, schema):
    """A tiny model that never saw A in B cells: B + A is a new cell type for A (read-only:
    tests that change its config copy it first)."""
    from engine import train_model

    out = tmp_path_factory.mktemp("held_out") / "m"
    train_model(synthetic_session.copy(), schema, out, seed=0, device="cpu", anchor=False,
                exclude=[{"cell_type": "B", "perturbation": "A"}], **TINY)
    return out
