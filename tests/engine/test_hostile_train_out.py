"""Issue 15 #1: ``train --out`` never deletes or replaces anything that is not a model folder."""

from __future__ import annotations

import json
import os

import pytest

from engine.checkpoint import check_destination, is_model_folder, save_folder
from engine.errors import ModelError

TINY_FAST = dict(members=1, ae_max_steps=5, flow_steps=5, latent_dim=4, ae_hidden=16, width=16, depth=1,
                 cond_dim=8, steps=2)


def _user_folder(tmp_path):
    d = tmp_path / "D"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("four years of work")
    (d / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return d


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*"))


def test_folder_with_user_files_is_refused_and_untouched(tmp_path):
    d = _user_folder(tmp_path)
    before = _snapshot(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(ModelError, match="holds files that are not a Perturb Studio model"):
            check_destination(d, overwrite=overwrite)
    assert _snapshot(tmp_path) == before


def test_existing_file_is_refused_not_hidden(tmp_path):
    f = tmp_path / "D"
    f.write_text("precious")
    with pytest.raises(ModelError, match="exists and is not a folder"):
        check_destination(f, overwrite=True)
    assert f.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]


def test_current_folder_and_parents_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in (".", "", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(ModelError, match="current folder"):
            check_destination(bad, overwrite=True)


def test_parent_that_is_a_file_and_links_are_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        check_destination(tmp_path / "afile" / "model")
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ModelError, match="is a link"):
        check_destination(tmp_path / "link", overwrite=True)


def test_model_folder_needs_overwrite_and_is_replaced_atomically(tmp_path):
    import torch

    d = tmp_path / "m"
    cfg = {"format": "perturb-studio-model", "v": 1}
    save_folder(d, cfg, {"w": torch.zeros(3)}, {})
    assert is_model_folder(d)
    with pytest.raises(ModelError, match="pass --overwrite"):
        save_folder(d, dict(cfg, v=2), {"w": torch.ones(3)}, {})
    assert json.loads((d / "config.json").read_text())["v"] == 1
    save_folder(d, dict(cfg, v=2), {"w": torch.ones(3)}, {}, overwrite=True)
    assert json.loads((d / "config.json").read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]      # no .old / .tmp left


def test_empty_folder_is_used(tmp_path):
    import torch

    d = tmp_path / "empty"
    d.mkdir()
    save_folder(d, {"format": "perturb-studio-model"}, {"w": torch.zeros(1)}, {})
    assert is_model_folder(d)


def test_train_model_refuses_before_training(tmp_path, synthetic, schema, monkeypatch):
    """The check runs before any work: a refused destination costs no training time."""
    import engine.train as train

    d = _user_folder(tmp_path)
    called = []
    monkeypatch.setattr(train, "apply_excludes", lambda *a, **k: called.append(1))
    with pytest.raises(ModelError, match="not a Perturb Studio model"):
        train.train_model(synthetic.copy(), schema, d, device="cpu", **TINY_FAST)
    assert not called
    assert (d / "thesis.txt").read_text() == "four years of work"


def test_cli_train_out_refused_with_exit_2(tmp_path, synthetic, capsys, monkeypatch):
    from engine.cli import main

    data = tmp_path / "data.h5ad"
    synthetic.write_h5ad(data)
    d = _user_folder(tmp_path)
    before = _snapshot(d)
    rc = main(["train", str(data), "--out", str(d), "--quiet", "--cell-type-key", "cell_type",
               "--perturbation-key", "perturbation", "--control", "control"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "not a Perturb Studio model" in err
    assert _snapshot(d) == before
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(data), "--out", ".", "--quiet"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "D" / "thesis.txt")


def test_saved_model_folder_follows_the_umask(tmp_path):
    import torch

    d = tmp_path / "m"
    old = os.umask(0o022)
    try:
        save_folder(d, {"format": "perturb-studio-model"}, {"w": torch.zeros(1)}, {})
    finally:
        os.umask(old)
    assert d.stat().st_mode & 0o777 == 0o755
    assert (d / "model.safetensors").stat().st_mode & 0o777 == 0o644
