"""Issue 15 #8: one broken user model folder must not hide the other models.

Before the fix a malformed config (a KeyError / TypeError / RecursionError / ValueError while
reading it) escaped ``list_models``: ``perturb-studio models`` printed a traceback and the GUI
listed no model at all, shipped ones included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine import registry
from engine.cli import main
from engine.errors import ModelError
from engine.registry import broken_models, list_models

SHIPPED = {"crispr-k562-glioblastoma", "kang-ifnb-pbmc", "papalexi-thp1-ko", "pbmc68k-celltypes"}


def _copy(src: Path, dest: Path, change=None) -> Path:
    shutil.copytree(src, dest)
    if change is not None:
        config = json.loads((dest / "config.json").read_text())
        change(config)
        (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture()
def user_dir(tmp_path, monkeypatch, tiny_model_dir):
    """A user model folder holding one good model and many broken ones."""
    root = tmp_path / "user-models"
    root.mkdir()
    monkeypatch.setenv("PERTURB_STUDIO_USER_MODELS", str(root))
    _copy(tiny_model_dir, root / "good")
    _copy(tiny_model_dir, root / "bad-type",
          lambda c: c["architecture"].__setitem__("latent_dim", "eight"))
    _copy(tiny_model_dir, root / "bad-space", lambda c: c.__setitem__("space", [1]))
    _copy(tiny_model_dir, root / "bad-key", lambda c: c.pop("architecture"))
    _copy(tiny_model_dir, root / "bad-version", lambda c: c.__setitem__("format_version", "abc"))
    deep = _copy(tiny_model_dir, root / "bad-deep")
    (deep / "config.json").write_text('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}")
    _copy(tiny_model_dir, root / "bad-json")
    (root / "bad-json" / "config.json").write_text("{not json")
    _copy(tiny_model_dir, root / "bad-card")
    (root / "bad-card" / "card.json").write_text("[1, 2, 3]")
    _copy(tiny_model_dir, root / "no-weights")
    (root / "no-weights" / "model.safetensors").unlink()
    (root / "notes").mkdir()                               # not a model at all
    (root / "notes" / "todo.txt").write_text("retrain")
    _copy(tiny_model_dir, root / "latin1-card")
    (root / "latin1-card" / "card.json").write_bytes('{"summary": "Müller"}'.encode("latin-1"))
    (root / ".hidden-tmp").mkdir()                         # our temp folders: ignored
    (root / "README.txt").write_text("a file, not a folder: ignored")
    return root


BROKEN = {
    "bad-type": "architecture.latent_dim must be a whole number",
    "bad-space": "space must be a JSON object",
    "bad-key": "lacks required entries: architecture",
    "bad-version": "format_version must be a whole number",
    "bad-deep": "nested too deeply",
    "bad-json": "is not valid JSON",
    "bad-card": "card.json must hold a JSON object",
    "no-weights": "model.safetensors is missing",
    "notes": "config.json is missing",
}


def test_broken_user_models_are_skipped_and_the_rest_listed(user_dir):
    infos = list_models()
    shipped = {m.name for m in infos if m.source == "shipped"}
    user = sorted(m.path.name for m in infos if m.source == "user")
    assert shipped == SHIPPED
    assert user == ["good", "latin1-card"]
    card = next(m.card for m in infos if m.path.name == "latin1-card")
    assert card["summary"] == "M\ufffdller"                 # decoded with a replacement mark


def test_broken_models_names_each_folder_and_why(user_dir):
    broken = broken_models()
    assert all(isinstance(p, Path) and isinstance(why, str) for p, why in broken)
    reasons = {p.name: why for p, why in broken}
    assert set(reasons) == set(BROKEN)
    for name, expected in BROKEN.items():
        assert expected in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name] and len(reasons[name]) <= 300
    assert all(p.parent == user_dir for p, _ in broken)


def test_an_unexpected_exception_in_one_folder_is_contained(user_dir, monkeypatch):
    real = registry.read_config

    def flaky(folder):
        if Path(folder).name == "good":
            raise KeyError("surprise")                       # a defect, not a ModelError
        return real(folder)

    monkeypatch.setattr(registry, "read_config", flaky)
    assert {m.name for m in list_models()} >= SHIPPED
    reasons = dict(broken_models())
    assert reasons[user_dir / "good"] == "unexpected KeyError while reading it: 'surprise'"
    with pytest.raises(ModelError, match=r"bad-card/card.json must hold a JSON object"):
        list_models(include_broken=True)          # the first broken folder, in sorted order


def test_cli_models_lists_the_good_models_despite_broken_ones(user_dir, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHIPPED)
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["path"].rsplit("/", 1)[-1] for m in listed if m["source"] == "user"} == \
        {"good", "latin1-card"}
