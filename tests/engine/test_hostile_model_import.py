"""Issue 15 #6: ``import_model`` copies only the model files, as regular files, under safe names.

Before the fix ``shutil.copytree`` copied the targets of links (a link to /etc/passwd was
installed with that file's contents), copied every extra file whatever its size, died with an
uncaught ``shutil.Error`` on a FIFO or a dangling link, and ``name='../../x'`` wrote outside the
user model folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import engine
from engine import install
from engine.errors import ModelError, ResourceError
from engine.install import check_model_name, import_model

MODEL_FILES = {"config.json", "model.safetensors", "card.json", "reference.safetensors"}


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    root = tmp_path / "home" / "user-models"
    monkeypatch.setenv("PERTURB_STUDIO_USER_MODELS", str(root))
    return root


@pytest.fixture()
def src(tiny_model_dir, tmp_path):
    dest = tmp_path / "downloads" / "tiny-model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_import_copies_exactly_the_model_files(src, user_dir):
    (src / "CARD.md").write_text("# tiny\n")
    (src / "notes.txt").write_text("not part of the model")
    (src / "sub").mkdir()
    (src / "sub" / "x.bin").write_bytes(b"x")
    info = import_model(src)
    assert info.source == "user" and info.path == user_dir / "tiny-model"
    assert sorted(os.listdir(info.path)) == sorted(MODEL_FILES | {"CARD.md"})
    for name in MODEL_FILES | {"CARD.md"}:
        assert not (info.path / name).is_symlink()
        assert (info.path / name).read_bytes() == (src / name).read_bytes()
    assert os.listdir(user_dir) == ["tiny-model"]            # no temp folder left
    assert engine.import_model is install.import_model            # public name still there


@pytest.mark.parametrize("link_name, target", [
    ("passwd", "/etc/passwd"), ("card.json", "/etc/passwd"), ("dangling", "/no/such/file"),
    ("model.safetensors", "/no/such/file"),
])
def test_links_anywhere_in_the_folder_are_refused_by_name(src, user_dir, link_name, target):
    (src / link_name).unlink(missing_ok=True)
    (src / link_name).symlink_to(target)
    with pytest.raises(ModelError, match=rf"contains a link, {link_name!r}; links are never "
                                         "followed"):
        import_model(src)
    assert _tree(user_dir) == []                           # nothing installed, no temp folder


def test_fifo_as_a_model_file_is_refused_and_as_an_extra_is_ignored(src, user_dir):
    (src / "card.json").unlink()
    os.mkfifo(src / "card.json")
    with pytest.raises(ModelError, match=r"card.json is a named pipe \(FIFO\), not a regular "
                                         "file"):
        import_model(src)
    assert _tree(user_dir) == []
    (src / "card.json").unlink()
    os.mkfifo(src / "pipe")                                 # not a model file: never opened
    info = import_model(src)
    assert sorted(os.listdir(info.path)) == ["config.json", "model.safetensors",
                                             "reference.safetensors"]


def test_folder_named_like_a_model_file_is_refused(src, user_dir):
    (src / "card.json").unlink()
    (src / "card.json").mkdir()
    with pytest.raises(ModelError, match=r"card.json is a folder, not a regular file"):
        import_model(src)


def test_a_huge_extra_file_is_not_copied(src, user_dir):
    with open(src / "video.mp4", "wb") as f:              # 1 GiB, sparse: costs no disk
        f.truncate(1 << 30)
    info = import_model(src)
    assert "video.mp4" not in os.listdir(info.path)


@pytest.mark.parametrize("fname, size, match", [
    ("model.safetensors", (2 << 30) + 1, r"model.safetensors is 2,048.0 MiB; at most 2,048 MiB"),
    ("config.json", (16 << 20) + 1, r"config.json is 16.0 MiB; at most 16 MiB"),
    ("card.json", (16 << 20) + 1, r"card.json is 16.0 MiB; at most 16 MiB"),
])
def test_oversized_model_files_are_refused_unread(src, user_dir, fname, size, match):
    with open(src / fname, "r+b") as f:
        f.truncate(size)                                  # sparse
    with pytest.raises(ModelError, match=match):
        import_model(src)
    assert _tree(user_dir) == []


@pytest.mark.parametrize("name, match", [
    ("../../x", "must be a plain name, not a path"),
    ("a/b", "must be a plain name"),
    ("a\\b", "must be a plain name"),
    ("..", "must be a plain name"),
    (".", "must be a plain name"),
    (".hidden", r"starts with '\.'; it must start with a letter or a digit"),
    ("my model", r"holds ' '; use only letters, digits and - _ . \+"),
    ("gène", r"holds 'è'"),
    ("x" * 101, "is 101 characters long; at most 100"),
    ("", "must not be empty"),
    ("CON", "reserved device name"),
    ("model.", "ends in '.'"),
])
def test_unsafe_names_are_refused_with_the_reason(src, user_dir, tmp_path, name, match):
    with pytest.raises(ModelError, match=match):
        import_model(src, name=name)
    assert _tree(user_dir) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]   # no ../../x written


def test_allowed_names_and_a_folder_name_made_safe(src, user_dir):
    assert check_model_name("my-model_v1.2+ko") == "my-model_v1.2+ko"
    assert import_model(src, name="my-model_v1.2+ko").path == user_dir / "my-model_v1.2+ko"
    spaced = src.with_name("My model (v2)")
    shutil.copytree(src, spaced)
    assert import_model(spaced).path == user_dir / "My-model-v2"


def test_existing_model_is_not_replaced(src, user_dir):
    import_model(src)
    before = (user_dir / "tiny-model" / "config.json").read_bytes()
    with pytest.raises(ModelError, match="a model named 'tiny-model' is already installed"):
        import_model(src)
    assert (user_dir / "tiny-model" / "config.json").read_bytes() == before


def test_invalid_model_leaves_nothing_behind(src, user_dir):
    (src / "config.json").write_text('{"format": "perturb-studio-model", "format_version": "x"}')
    with pytest.raises(ModelError, match=r"lacks required entries") as info:
        import_model(src)
    assert str(src) in str(info.value) and ".importing" not in str(info.value)
    assert _tree(user_dir) == []                            # the temp copy was removed


def test_not_enough_disk_space_is_a_resource_error(src, user_dir, monkeypatch):
    monkeypatch.setattr(install.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match=r"needs [\d.]+ MiB but only 0.0 MiB is free"):
        import_model(src)


def test_the_folder_itself_may_be_reached_by_a_link(src, user_dir, tmp_path):
    link = tmp_path / "shortcut"
    link.symlink_to(src, target_is_directory=True)
    assert import_model(link, name="via-link").path == user_dir / "via-link"
