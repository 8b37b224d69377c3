"""Hostile files through the GUI (issue 15): bad datasets on the Data page and hostile model
folders through Import model. The engine refuses them (DataError / ModelError); the window must
show its message in the page, keep what was loaded before, and stay usable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

GOOD = "norman2019_tiny_50x50.h5ad"


def _hostile_file(kind: str, tmp_path: Path, data_dir: Path) -> Path:
    d = tmp_path / "hostile"
    d.mkdir(exist_ok=True)
    if kind == "not-10x":
        p = d / "not-10x"
        p.mkdir()
        (p / "readme.txt").write_text("no matrix here\n")
        return p
    if kind == "truncated.h5ad":
        p = d / kind
        p.write_bytes((data_dir / GOOD).read_bytes()[:30_000])
        return p
    text = {"semicolon.csv": "cell;G1;G2\nc1;1;2\nc2;3;4\n",
            "semicolon-nan.csv": "cell;G1;G2\nc1;1;2\nc2;nan;4\n",
            "ragged.csv": "cell,G1,G2,G3\nc1,1,2,3\nc2,3\nc3,1,1,1\n",
            "nan-counts.csv": "cell,G1,G2\nc1,1,nan\nc2,3,4\n",
            "empty.csv": ""}[kind]
    p = d / kind
    p.write_text(text)
    return p


def _load_and_capture(qtbot, w, path) -> tuple[str, str]:
    """Load ``path``; return the (message, details) of the failed load job."""
    got = []
    w.load_dataset(str(path))
    w.jobs.jobs["load"].failed.connect(lambda m, d: got.append((m, d)))  # queued: not missed
    qtbot.waitUntil(lambda: w.session.busy is None and "load" not in w.jobs.jobs, timeout=60_000)
    assert got, f"{path} was not refused: {w.data_page.summary.text()}"
    return got[0]


def _close_error_boxes(w) -> None:
    from PySide6.QtWidgets import QMessageBox

    for box in w.findChildren(QMessageBox, "error-box"):
        box.close()


@pytest.mark.parametrize("kind", ["semicolon-nan.csv", "ragged.csv", "nan-counts.csv",
                                  "empty.csv", "truncated.h5ad", "not-10x"])
def test_bad_dataset_shows_the_engine_error_and_keeps_the_loaded_one(qtbot, window, tmp_path,
                                                                     data_dir, kind):
    w = window
    good = data_dir / GOOD
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.load_dataset(str(good))
    before, summary = w.session.adata, w.data_page.summary.text()
    bad = _hostile_file(kind, tmp_path, data_dir)
    msg, details = _load_and_capture(qtbot, w, bad)
    # the engine refused it with a DataError naming the file (not an unexpected exception)
    assert "engine.errors.DataError" in details or "engine.errors.SchemaError" in details, \
        details[-600:]
    assert bad.name in msg and not msg.startswith("Something went wrong")
    page = w.data_page
    assert page.load_error.isVisibleTo(page)
    assert page.load_error.text().startswith(f"Could not open {bad.name}: {msg}")
    assert f"{GOOD} (opened before) is still the dataset in use." in page.load_error.text()
    assert w.session.adata is before and page.adata is before and w.session.data_path == str(good)
    assert page.summary.text() == summary            # not stuck at "Loading …"
    assert w.last_error == msg
    qtbot.waitUntil(lambda: not w.jobs.busy(), timeout=30_000)
    assert w.run_bar.label.text().endswith("failed (see the message).")
    _close_error_boxes(w)
    # still usable: the next good file loads and the error goes away
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.load_dataset(str(data_dir / "pbmc68k_reduced_counts.h5ad"))
    assert w.session.adata is not before and not page.load_error.isVisibleTo(page)
    assert "pbmc68k_reduced_counts.h5ad" in page.summary.text()


def test_bad_dataset_first_says_nothing_is_loaded(qtbot, window, tmp_path, data_dir):
    w = window
    bad = _hostile_file("empty.csv", tmp_path, data_dir)
    msg, _details = _load_and_capture(qtbot, w, bad)
    page = w.data_page
    assert page.load_error.text() == f"Could not open empty.csv: {msg}\nNo dataset is loaded."
    assert page.summary.text() == "No dataset loaded." and w.session.adata is None
    # a file name that looks like HTML is shown as written
    odd = tmp_path / "<b>bold&amp;.csv"
    odd.write_text("")
    _load_and_capture(qtbot, w, odd)
    assert page.load_error.text().startswith("Could not open <b>bold&amp;.csv: ")
    from PySide6.QtCore import Qt

    assert page.load_error.textFormat() == Qt.TextFormat.PlainText
    missing = tmp_path / "gone.h5ad"
    w.load_dataset(str(missing))
    assert "gone.h5ad does not exist" in page.load_error.text()


def test_dataset_with_html_in_names_is_escaped(qtbot, window, tmp_path):
    """Column names, values and the file name are data: the summary, the column table's
    tooltips and the role messages show them literally."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from PySide6 import QtGui

    from tests.app.test_hostile_gui import shown, shown_tip

    n = 12
    obs = pd.DataFrame({"<i>kind&lt;": ["<b>T</b>"] * 6 + ["B&amp"] * 6},
                       index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(np.ones((n, 4), dtype=np.float32), obs=obs)
    a.var_names = [f"G{i}" for i in range(4)]
    p = tmp_path / "<u>odd&amp;.h5ad"
    a.write_h5ad(p)
    w = window
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.load_dataset(str(p))
    page = w.data_page
    assert shown(page.summary).startswith("<u>odd&amp;.h5ad: 12 cells × 4 genes")
    tips = [page.columns.item(0, j).toolTip() for j in range(4)]
    assert shown_tip(tips[0]) == "<i>kind&lt;" and "<b>T</b> (6)" in shown_tip(tips[3])
    assert QtGui.Qt.mightBeRichText(tips[0])  # escaped inside a tag: rendered, not raw
    # a role message quoting the column is shown literally
    page.role_combos["cell_type_key"].setCurrentText("(none)")
    page.role_combos["perturbation_key"].setCurrentText("<i>kind&lt;")
    page.control.setCurrentText("<s>ctl</s>")
    msgs = [shown(m) for m in page.role_msgs.values() if m.text()] + [shown(page.general)]
    assert any("<s>ctl</s>" in m for m in msgs), msgs


def test_semicolon_csv_opens(qtbot, window, tmp_path, data_dir):
    """A semicolon-separated table is read (the engine detects the separator), and a failed
    load before it leaves no error behind once it opens."""
    w = window
    _load_and_capture(qtbot, w, _hostile_file("empty.csv", tmp_path, data_dir))
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.load_dataset(str(_hostile_file("semicolon.csv", tmp_path, data_dir)))
    assert w.session.adata.n_obs == 2 and list(w.session.adata.var_names) == ["G1", "G2"]
    assert not w.data_page.load_error.isVisibleTo(w.data_page)


# -- Import model ---------------------------------------------------------------------------------
def _model_copy(kang_model_dir: Path, tmp_path: Path, name: str) -> Path:
    src = tmp_path / "downloads" / name
    src.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "card.json"):
        if (kang_model_dir / f).exists():
            shutil.copy2(kang_model_dir / f, src / f)
    return src


def _import_fails(qtbot, w, folder, name=None) -> str:
    with qtbot.waitSignal(w.error_shown, timeout=60_000) as sig:
        w.import_model(str(folder), name=name)
    qtbot.waitUntil(lambda: "import" not in w.jobs.jobs, timeout=30_000)
    msg = sig.args[0]
    page = w.models_page
    assert page.message.isVisibleTo(page)
    assert page.message.text() == f"Could not import {folder}: {msg}"
    assert not msg.startswith("Something went wrong"), msg  # a ModelError, not a crash
    _close_error_boxes(w)
    return msg


def _installed(tmp_path) -> list[str]:
    root = tmp_path / "user-models"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.skipif(not Path("/etc/passwd").exists(), reason="needs /etc/passwd to link to")
def test_import_refuses_a_link_and_stays_usable(qtbot, window, kang_model_dir, tmp_path):
    w = window
    src = _model_copy(kang_model_dir, tmp_path, "linked")
    (src / "card.json").unlink()
    os.symlink("/etc/passwd", src / "card.json")
    msg = _import_fails(qtbot, w, src)
    assert "card.json" in msg and "link" in msg.lower()
    assert "linked" not in _installed(tmp_path)
    for f in (tmp_path / "user-models").rglob("*") if (tmp_path / "user-models").exists() else []:
        assert not f.is_file() or b"root:" not in f.read_bytes()
    # usable: a good folder imports next
    good = _model_copy(kang_model_dir, tmp_path, "good-one")
    with qtbot.waitSignal(w.models_listed, timeout=60_000):
        w.import_model(str(good))
    assert "good-one" in [i.path.name for i in w.models_page.infos]
    assert w.models_page.message.text().startswith("Imported ")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_import_refuses_a_fifo(qtbot, window, kang_model_dir, tmp_path):
    w = window
    src = _model_copy(kang_model_dir, tmp_path, "piped")
    fifo = src / "card.json"
    fifo.unlink()
    os.mkfifo(fifo)
    try:
        msg = _import_fails(qtbot, w, src)
    finally:  # should the engine ever open it, give the reader an end of file
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert "card.json" in msg and ("FIFO" in msg or "regular file" in msg)
    assert "piped" not in _installed(tmp_path)


def test_import_refuses_a_huge_card(qtbot, window, kang_model_dir, tmp_path):
    w = window
    src = _model_copy(kang_model_dir, tmp_path, "huge")
    with open(src / "card.json", "wb") as f:  # sparse: 1 GiB that takes no disk space
        f.truncate(1 << 30)
    msg = _import_fails(qtbot, w, src)
    assert "card.json" in msg and "at most" in msg
    assert "huge" not in _installed(tmp_path)


@pytest.mark.parametrize("name", ["../../evil", "../x<b>y</b>", ".hidden", "a/b"])
def test_import_passes_the_name_and_shows_the_refusal(qtbot, window, kang_model_dir, tmp_path,
                                                      name):
    w = window
    src = _model_copy(kang_model_dir, tmp_path, "fine-folder")
    msg = _import_fails(qtbot, w, src, name=name)
    assert repr(name) in msg or name in msg  # the engine says which name it refused
    assert _installed(tmp_path) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert not list(tmp_path.parent.glob("x<b>y*"))
