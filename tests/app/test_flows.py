"""End-to-end flows through the real window (offscreen), driven with qtbot."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(qtbot, w, path):
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.load_dataset(str(path))


def _use_model(qtbot, w, name):
    assert w.models_page.select(name), [i.name for i in w.models_page.infos]
    if w.session.model is not None and w.session.model.name == w.models_page.current().name:
        return
    with qtbot.waitSignal(w.model_loaded, timeout=60_000):
        w.models_page.use_btn.click()


def _compose(w, cell_type="CD14+Mono", target="stimulated", n=60, steps=4):
    c = w.compose_page
    c.cell_type.setCurrentText(cell_type)
    c.perts.rows[0].target.setText(target)
    c.n_cells.setValue(n)
    c.steps.setValue(steps)
    return c


def test_gui_path_imports_no_heavy_modules():
    code = ("import sys, app.__main__, app.main_window, app.tour;"
            "heavy=[m for m in ('torch','anndata','scanpy','umap','sklearn') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr


def test_load_real_kang_summary_and_role_form(qtbot, window, kang_file):
    w = window
    _load(qtbot, w, kang_file)
    d = w.data_page
    assert "2,421 cells" in d.summary.text() and "4,805 genes" in d.summary.text()
    assert "counts" in d.summary.text()
    names = [d.columns.item(i, 0).text() for i in range(d.columns.rowCount())]
    assert {"condition", "cell_type", "donor"} <= set(names)
    assert d.role_combos["cell_type_key"].currentText() == "cell_type"
    assert d.role_combos["perturbation_key"].currentText() == "condition"
    assert d.control.currentText() == "control"
    assert d.schema_ok and w.session.schema_ok
    # a wrong control label is flagged next to the field, and training is refused
    d.control.setCurrentText("bogus")
    assert not d.schema_ok
    assert d.role_msgs["control_label"].isVisibleTo(d) or d.general.text()
    assert not w.train_page.train_btn.isEnabled()
    d.control.setCurrentText("control")
    assert d.schema_ok
    # the file is remembered
    from app import settings

    assert settings.recent_files()[0] == str(kang_file.resolve())
    assert d.recent.count() == 1


def test_bad_file_shows_error_and_app_stays_usable(qtbot, window, tmp_path, kang_file):
    w = window
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"this is not an h5ad file")
    with qtbot.waitSignal(w.error_shown, timeout=30_000) as sig:
        w.load_dataset(str(bad))
    assert "broken.h5ad" in sig.args[0]
    assert w.session.adata is None
    box = w.findChild(type(w).__mro__[0].__base__.__base__, "error-box")  # QWidget lookup
    assert box is not None
    from app import settings

    assert "broken.h5ad" in settings.log_path().read_text()
    box.close()
    _load(qtbot, w, kang_file)  # still usable
    assert w.session.adata is not None and w.session.adata.n_obs == 2421


def test_composer_flags_invalid_choices(qtbot, window, model_name):
    w = window
    _use_model(qtbot, w, model_name)
    c = w.compose_page
    space = w.session.model.space
    assert [c.cell_type.itemText(i) for i in range(c.cell_type.count())] == space.cell_types
    row = c.perts.rows[0]
    row.target.setText("NOTAGENE")
    assert not row.status.isHidden() and "never perturbed" in row.status.text()
    assert not c.add_btn.isEnabled() and not c.generate_btn.isEnabled()
    assert "✖" in c.check.text()
    row.target.setText("stimulated")
    assert row.status.isHidden()
    assert c.add_btn.isEnabled() and c.generate_btn.isEnabled()
    # at most max_perturbations rows
    for _ in range(5):
        c.perts.add_row()
    assert len(c.perts.rows) == max(space.max_perturbations, 1)
    assert not c.perts.add_button.isEnabled()
    # queue: all singles, each generated with its control
    c.add_all_singles()
    assert c.queue.count() == len(space.targets)
    assert "matching control" in c.summary.text()


def test_generate_heatmap_umap_export_and_reload(qtbot, window, model_name, kang_file, tmp_path):
    import anndata as ad

    w = window
    _load(qtbot, w, kang_file)
    _use_model(qtbot, w, model_name)
    c = _compose(w)
    c.add_current()
    c.cell_type.setCurrentText("CD4T")
    c.add_current()
    assert c.queue.count() == 2
    req = c.request()
    assert [x.cell_type for x in req.conditions] == ["CD14+Mono", "CD4T"]
    assert req.n == 60 and req.n_total == 4 * 60  # 2 conditions + 2 matching controls
    with qtbot.waitSignals([w.generation_finished, w.heatmap_updated, w.de_updated],
                           timeout=120_000):
        c.generate_btn.click()
    exp = w.session.experiment
    assert exp.adata.n_obs == 4 * 60  # 2 conditions + 2 matching controls
    assert exp.saved_to and Path(exp.saved_to).exists()  # autosave to the output folder
    r = w.results_page
    assert r.heatmap.matrix.shape == (30, 2) and np.abs(r.heatmap.matrix).max() > 0
    assert len(r.heatmap.row_labels) == 30 and r.heatmap.col_labels == exp.labels
    assert r.de_model.rowCount() == exp.adata.n_vars
    assert w.nav.currentRow() == 5
    # effects, never p-values between generated cells (issue 10)
    heads = [r.de_model.headerData(i, __import__("PySide6.QtCore").QtCore.Qt.Orientation
                                   .Horizontal) for i in range(r.de_model.columnCount())]
    assert heads[:2] == ["gene", "effect (log2 FC)"] and "real (log2 FC)" in heads
    assert not any("p-value" in h or "adjusted" in h for h in heads)
    if w.session.model.members == 1:
        assert "90% interval" not in heads
        assert "single member: no uncertainty estimate" in r.de_note.text()
        assert r.volcano.ylabel() == "predicted effect (log2 fold change)"
    else:
        assert "90% interval" in heads
        assert r.volcano.ylabel() == "confidence: |effect| / 90% interval width"
    # sortable DE table
    r.table.sortByColumn(1, __import__("PySide6.QtCore").QtCore.Qt.SortOrder.DescendingOrder)
    top = float(r.proxy.index(0, 1).data(256))
    assert top == pytest.approx(float(r.de_frame["predicted_log2fc"].max()), rel=1e-5)
    # another comparison
    with qtbot.waitSignal(w.de_updated, timeout=30_000):
        r.compare.setCurrentIndex(1)
    assert r.de_label == exp.labels[1]
    # UMAP with the real cells (it may be ready already: wait on the state, not the signal)
    qtbot.waitUntil(lambda: w.session.embedding is not None, timeout=180_000)
    coords = r.umap.coords
    assert coords.shape == (exp.adata.n_obs + 2421, 2) and np.isfinite(coords).all()
    r.tabs.setCurrentIndex(1)
    r.color_by.setCurrentText("cell type")
    r.gene.setText(str(exp.adata.var_names[0]).lower())  # case-insensitive
    r._gene_entered()
    assert r.umap.colorbar.isVisible() or not r.umap.legend.isVisible()
    assert "cell" in w.results_page.describe_cell(0)
    # exports: h5ad (reload), CSV, plots PNG + SVG, DE table
    out = tmp_path / "exports"
    with qtbot.waitSignal(w.exported, timeout=60_000):
        w.export("h5ad", str(out / "cells.h5ad"))
    back = ad.read_h5ad(out / "cells.h5ad")
    assert back.n_obs == exp.adata.n_obs and "counts" in back.layers
    assert "perturb_studio" in back.uns and set(back.obs["condition"]) == \
        set(exp.adata.obs["condition"])
    with qtbot.waitSignal(w.exported, timeout=60_000):
        w.export("csv", str(out / "cells.csv"))
    assert (out / "cells.csv").stat().st_size > 0
    for tab, name in ((0, "heatmap.png"), (1, "umap.svg"), (2, "volcano.png")):
        r.tabs.setCurrentIndex(tab)
        assert w.export("plot", str(out / name))
        assert (out / name).stat().st_size > 1000
    assert w.export("de", str(out / "de.csv"))
    import pandas as pd

    de = pd.read_csv(out / "de.csv")
    assert list(de.columns)[:2] == ["gene", "predicted_log2fc"]
    assert not {"pval", "padj", "mean_a", "mean_b"} & set(de.columns)
    leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers  # atomic writes leave no temp files


def test_cancel_mid_run_writes_nothing(qtbot, window, model_name, tmp_path):
    w = window
    _use_model(qtbot, w, model_name)
    c = _compose(w, n=60_000, steps=50)
    finished = []
    w.generation_finished.connect(lambda: finished.append(1))
    with qtbot.waitSignal(w.jobs.job_started, timeout=10_000):
        c.generate_btn.click()
    job = w.jobs.jobs["run"]
    with qtbot.waitSignal(job.progress, timeout=60_000):
        pass
    assert w.run_bar.cancel.isEnabled()
    # the speed of cancel is measured by build_scripts/bench_app.py, not here
    with qtbot.waitSignal(w.generation_cancelled, timeout=10_000):
        w.run_bar.cancel.click()
    qtbot.waitUntil(lambda: "run" not in w.jobs.jobs, timeout=30_000)
    assert not finished and w.session.experiment is None
    out = tmp_path / "out"
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing written, not even temp files
    assert "Cancelled" in w.run_bar.label.text()
    assert not w.run_bar.cancel.isEnabled()


def test_perturb_my_cells(qtbot, window, model_name, kang_file):
    w = window
    _load(qtbot, w, kang_file)
    _use_model(qtbot, w, model_name)
    p = w.perturb_page
    w.nav.setCurrentRow(3)
    assert "model genes found" in p.mapping.text() and "missing" in p.mapping.text()
    i = p.cell_type.findData("CD14+Mono")
    p.cell_type.setCurrentIndex(i)
    p.n_cells.setValue(40)
    p.steps.setValue(4)
    p.perts.rows[0].target.setText("stimulated")
    assert p.run_btn.isEnabled(), p.check.text()
    req = p.request()
    assert len(req.cell_index) == 40 and req.steps == 4 and not req.condition.is_control
    with qtbot.waitSignals([w.generation_finished, w.heatmap_updated], timeout=120_000):
        p.run_btn.click()
    exp = w.session.experiment
    assert exp.mode == "perturb" and exp.adata.n_obs == 40 and exp.source.n_obs == 40
    assert "source_cell" in exp.adata.obs
    assert set(exp.adata.obs["source_cell"]) <= set(w.session.adata.obs_names)


def test_train_a_model_appears_with_card(qtbot, window, kang_file, monkeypatch):
    w = window
    _load(qtbot, w, kang_file)
    t = w.train_page
    t.name.setText("bad name")
    assert not t.train_btn.isEnabled()
    t.name.setText("my-kang")
    assert t.train_btn.isEnabled()
    req = t.request()
    assert req.name == "my-kang" and req.backbone == "mlp" and req.overrides["members"] == 5
    t.members.setValue(1)
    assert t.request().overrides["members"] == 1 and "without an uncertainty" in \
        t.members_note.text()
    assert req.overrides["anchor"] is True                   # on by default, as in the engine
    t.anchor.setChecked(False)
    assert t.request().overrides["anchor"] is False
    t.anchor.setChecked(True)
    # all 4,805 genes (no highly-variable-gene selection, so scanpy is not imported), tiny net
    req = dataclasses.replace(req, overrides=dict(ae_max_steps=30, flow_steps=40, width=32,
                                                  depth=1, ae_hidden=32, members=2,
                                                  anchor=True))
    losses = []
    w.jobs.job_started.connect(lambda s: s == "run" and w.jobs.jobs["run"].progress.connect(
        lambda p: losses.append(p.loss)))
    with qtbot.waitSignal(w.training_finished, timeout=150_000):
        w.controller.train(req)
    assert any(x is not None for x in losses)
    assert t.loss.curves  # the loss curve was drawn
    info = w.models_page.current()
    assert info.name == "my-kang" and info.source == "user"
    assert "CD14+Mono" in w.models_page.card.toPlainText()
    assert "ensemble of 2 members" in w.models_page.card.toPlainText()
    # the box on the Train page reached the model: new cell types start from the baseline
    assert "New cell type conditions start from the cell type's control cells" in \
        w.models_page.card.toPlainText()


def test_settings_are_remembered(qtbot, window, model_name, kang_file):
    from app.main_window import MainWindow

    w = window
    _load(qtbot, w, kang_file)
    _use_model(qtbot, w, model_name)
    w.resize(1111, 777)
    w.close()
    from app import settings

    assert settings.settings().value("window/geometry")
    w2 = MainWindow()
    qtbot.addWidget(w2)
    with qtbot.waitSignal(w2.model_loaded, timeout=60_000):  # last model comes back
        w2.show()
    assert w2.session.model.name == w.session.model.name
    assert w2.data_page.recent.count() == 1
    qtbot.waitUntil(lambda: not w2.jobs.busy(), timeout=30_000)


def test_about_and_shortcuts(qtbot, window):
    w = window
    text = w.about_text()
    assert "PySide6" in text and "pyqtgraph" in text and "Device" in text
    shortcuts = {a.shortcut().toString() for a in w.actions() if not a.shortcut().isEmpty()}
    assert {"Ctrl+O", "Ctrl+G", "Esc", "Ctrl+1", "Ctrl+6"} <= shortcuts


def test_every_control_has_a_tooltip(qtbot, window):
    from PySide6.QtWidgets import (
        QAbstractButton,
        QComboBox,
        QDoubleSpinBox,
        QLineEdit,
        QListWidget,
        QSpinBox,
    )

    w = window
    missing = []
    for cls in (QAbstractButton, QComboBox, QLineEdit, QSpinBox, QDoubleSpinBox, QListWidget):
        for c in w.findChildren(cls):
            if type(c).__name__ in ("QToolBarExtension", "QLineEdit") and c.parent() is not None \
                    and isinstance(c.parent(), (QComboBox, QSpinBox, QDoubleSpinBox)):
                continue
            if type(c).__name__ == "QToolBarExtension" or c.objectName().startswith("qt_"):
                continue
            if type(c).__name__ == "QToolButton" and type(c.parent()).__name__ in (
                    "QLineEdit", "QTabBar"):  # Qt's own clear / scroll buttons
                continue
            if not c.toolTip() and not (hasattr(c, "defaultAction") and c.defaultAction()
                                        and c.defaultAction().toolTip()):
                missing.append(f"{type(c).__name__} {getattr(c, 'text', lambda: '')()} in "
                               f"{type(c.parent()).__name__}")
    assert not missing, missing


def test_import_model_folder(qtbot, window, kang_model_dir, tmp_path):
    import shutil

    w = window
    src = tmp_path / "downloads" / "imported-kang"
    shutil.copytree(kang_model_dir, src)
    with qtbot.waitSignal(w.models_listed, timeout=60_000):
        w.import_model(str(src))
    paths = [i.path.name for i in w.models_page.infos if i.source == "user"]
    assert "imported-kang" in paths
    # a folder that is not a model: plain-language error, nothing added
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{broken")
    with qtbot.waitSignal(w.error_shown, timeout=30_000):
        w.import_model(str(bad))
    assert "not-a-model" not in [i.path.name for i in w.models_page.infos]


def test_heatmap_widget_standalone(qtbot, tmp_path):
    from app.plots.heatmap import HeatmapPlot

    h = HeatmapPlot()
    qtbot.addWidget(h)
    m = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    h.set_data(m, [f"GENE{i}" for i in range(12)], ["A", "B", "C"])
    for suffix in ("png", "svg"):
        p = h.export(tmp_path / f"heat.{suffix}")
        assert p.stat().st_size > 1000
    assert (tmp_path / "heat.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError):
        h.set_data(m, ["x"], ["A", "B", "C"])


def test_embed_server_cancel_stops_the_embedding():
    import threading

    import anndata as ad
    import scipy.sparse as sp

    from app.embed_process import server
    from engine.errors import Cancelled

    rng = np.random.default_rng(0)
    a = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, size=(3000, 200)).astype(np.float32)))
    a.var_names = [f"G{i}" for i in range(200)]
    ev = threading.Event()
    phases = []

    def progress(p):  # Cancel as soon as the helper reports its first step
        phases.append(p.phase)
        ev.set()

    with pytest.raises(Cancelled, match="cancelled by the user"):
        server().embed({"a": a}, progress=progress, cancel=ev)
    assert phases[:1] == ["normalising"]  # it was cancelled mid-way, not before it started
    # how fast it stops is measured by build_scripts/bench_app.py, not here
    coords, labels = server().embed({"a": a[:300]})  # the helper comes back for the next job
    assert coords.shape == (300, 2) and set(labels) == {"a"}


def test_cancel_training_leaves_no_model(qtbot, window, kang_file, tmp_path):
    w = window
    _load(qtbot, w, kang_file)
    w.train_page.name.setText("never-finished")
    req = dataclasses.replace(w.train_page.request(),
                              overrides=dict(ae_max_steps=5000, flow_steps=5000))
    finished = []
    w.training_finished.connect(lambda: finished.append(1))
    with qtbot.waitSignal(w.jobs.job_started, timeout=10_000):
        w.controller.train(req)
    with qtbot.waitSignal(w.jobs.jobs["run"].progress, timeout=60_000):
        pass
    assert not w.train_page.train_btn.isEnabled()  # no second job while one runs
    with qtbot.waitSignal(w.jobs.jobs["run"].cancelled, timeout=10_000):
        w.cancel_running()
    qtbot.waitUntil(lambda: "run" not in w.jobs.jobs, timeout=30_000)
    assert "Cancelled" in w.run_bar.label.text()
    assert not finished
    assert not (tmp_path / "user-models" / "never-finished").exists()
    assert not [p for p in (tmp_path / "user-models").glob("*never-finished*")]
    assert w.train_page.train_btn.isEnabled()


def test_drop_a_file_opens_it(qtbot, window, kang_file):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    w = window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(kang_file))])
    enter = QDragEnterEvent(w.rect().center(), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    w.dragEnterEvent(enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(w.rect().center()), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.dropEvent(drop)
    assert w.session.adata.n_obs == 2421
