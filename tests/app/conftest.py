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
