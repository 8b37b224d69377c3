"""App test fixtures: off-screen Qt, settings + log + user models in a temporary folder, a model.

QT_QPA_PLATFORM is set before anything imports Qt. Tests drive the real MainWindow with qtbot and
wait on its signals (never a blocking QThread.wait in the GUI thread).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

KANG = "kang-ifnb-pbmc"


def _shipped_kang() -> Path | None:
    from engine.registry import shipped_models_dir

    p = shipped_models_dir() / KANG
    return p if (p / "config.json").exists() else None


@pytest.fixture(scope="session")
def kang_model_dir(request, data_dir) -> Path:
    """The shipped Kang model, or (until it is installed) a tiny one trained here once and kept
    in pytest's cache folder (retrained if the engine can no longer load it)."""
    shipped = _shipped_kang()
    if shipped is not None:
        return shipped
    import engine

    out = Path(request.config.cache.mkdir("perturb-studio-tiny-kang")) / "kang-tiny"
    if (out / "config.json").exists():
        try:
            engine.PerturbModel.load(out, device="cpu")
            return out
        except Exception:  # noqa: BLE001 - stale format: train again
            shutil.rmtree(out, ignore_errors=True)
    adata = engine.read_dataset(data_dir / "kang2018_ifnb_pbmc_train.h5ad")
    engine.train_model(adata, engine.guess_schema(adata), out, name="kang-tiny",
                       ae_max_steps=60, flow_steps=80, max_genes=300, width=64, depth=2,
                       ae_hidden=64, steps=4)
    return out


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path, monkeypatch):
    """Settings, log file, output folder and user models live in tmp_path for every test."""
    cfg = tmp_path / "config"
    monkeypatch.setenv("PERTURB_STUDIO_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("PERTURB_STUDIO_USER_MODELS", str(tmp_path / "user-models"))
    from app import settings

    settings.setup_logging()
    settings.put("output_dir", str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    yield
    import logging

    if settings._log_handler is not None:
        logging.getLogger().removeHandler(settings._log_handler)
        settings._log_handler.close()
        settings._log_handler = None


@pytest.fixture
def model_name(kang_model_dir, tmp_path) -> str:
    """Name of the Kang model as the app lists it (copied to the user folder if not shipped)."""
    if _shipped_kang() is not None:
        return KANG
    dst = tmp_path / "user-models" / kang_model_dir.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(kang_model_dir, dst)
    return kang_model_dir.name


@pytest.fixture
def window(qtbot, model_name):
    from app.main_window import MainWindow

    w = MainWindow()
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.models_listed, timeout=30_000):
        w.show()
    yield w
    for slot in list(w.jobs.jobs):
        w.jobs.cancel(slot)
    qtbot.waitUntil(lambda: not w.jobs.busy(), timeout=30_000)
    w.close()  # saves settings, marks the job runner closed: late signals are dropped


@pytest.fixture
def kang_file(data_dir) -> Path:
    return data_dir / "kang2018_ifnb_pbmc_train.h5ad"


# -- a small ensemble and its data (issue 10: effects with intervals, baselines, real cells) ----
N_GENES = 60
#: Held out of the ensemble's training: a new combination of measured parts.
HELD_OUT = {"cell_type": "B", "perturbation": "A+B"}


def make_synthetic(seed: int = 0, n_per: int = 40, gene_prefix: str = "G"):
    """Two cell types x {control, A, B, A+B} with known effects (as tests/engine/conftest.py):
    genes 0-9 mark the cell types, 10-19 go up under A, 20-29 under B."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows, obs = [], []
    base = rng.gamma(2.0, 0.5, N_GENES)
    for ct_i, ct in enumerate(["T", "B"]):
        for pert in ("control", "A", "B", "A+B"):
            mu = base.copy()
            mu[ct_i * 5:(ct_i + 1) * 5] *= 6.0
            if "A" in pert:
                mu[10:20] *= 5.0
            if "B" in pert.split("+"):
                mu[20:30] *= 5.0
            lib = rng.lognormal(np.log(300), 0.2, n_per)
            lam = rng.gamma(5.0, (lib[:, None] * (mu / mu.sum())) / 5.0)
            rows.append(rng.poisson(lam))
            obs += [{"cell_type": ct, "perturbation": pert, "perturbation_type": "CRISPRa"}
                    for _ in range(n_per)]
    obs = pd.DataFrame(obs)
    obs.index = [f"c{i}" for i in range(len(obs))]
    for c in obs.columns:
        obs[c] = obs[c].astype("category")
    a = ad.AnnData(sp.csr_matrix(np.vstack(rows).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=[f"{gene_prefix}{i}" for i in range(N_GENES)]))
    a.layers["counts"] = a.X.copy()
    return a


@pytest.fixture(scope="session")
def synthetic_file(tmp_path_factory) -> Path:
    """The synthetic dataset as an .h5ad the window opens (genes G0..G59, the model's)."""
    p = tmp_path_factory.mktemp("synthetic") / "synthetic.h5ad"
    make_synthetic().write_h5ad(p)
    return p


@pytest.fixture(scope="session")
def mismatched_file(tmp_path_factory) -> Path:
    """Other cells whose genes mostly are not the model's: 10 of its 60 genes."""
    a = make_synthetic(seed=1)
    a.var_names = [f"G{i}" if i < 10 else f"OTHER{i}" for i in range(N_GENES)]
    p = tmp_path_factory.mktemp("mismatched") / "other_genes.h5ad"
    a.write_h5ad(p)
    return p


@pytest.fixture(scope="session")
def ensemble_model_dir(request) -> Path:
    """A 3-member ensemble trained (briefly: ~20 s on 2 cores) on the synthetic data without
    B | A+B, kept in pytest's cache folder (trained again if the engine can no longer load it
    or it is not an ensemble with reference cells)."""
    import engine

    out = Path(request.config.cache.mkdir("perturb-studio-ensemble")) / "ens3"
    if (out / "config.json").exists():
        try:
            m = engine.PerturbModel.load(out, device="cpu")
            if m.members == 3 and m.n_reference_cells > 0:
                return out
        except Exception:  # noqa: BLE001 - stale format: train again
            pass
        shutil.rmtree(out, ignore_errors=True)
    schema = engine.Schema(cell_type_key="cell_type", perturbation_key="perturbation",
                           perturbation_type_key="perturbation_type", control_label="control")
    engine.train_model(make_synthetic(), schema, out, name="ens3", members=3, exclude=[HELD_OUT],
                       ae_max_steps=50, flow_steps=50, latent_dim=8, ae_hidden=32, width=32,
                       depth=2, cond_dim=16, steps=4)
    return out


@pytest.fixture
def ensemble_name(ensemble_model_dir, tmp_path) -> str:
    """The ensemble, copied to the user models with a card that scores it below the baseline on
    combinations measured in another cell type (B | A+B: its class is new_cell_type), so that
    the warning shows."""
    import json

    dst = tmp_path / "user-models" / "ens3"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ensemble_model_dir, dst)
    card_path = dst / "card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    card["evidence"] = {
        "measured": {"model": {"r2_top100": 0.91}, "baseline": {"name": "mean_shift",
                                                                 "r2_top100": 0.55}},
        "new_cell_type": {"model": {"r2_top100": 0.42},
                            "baseline": {"name": "additive", "r2_top100": 0.71}}}
    card_path.write_text(json.dumps(card))
    return "ens3"
