"""Issue 11's list of small things found when tried as a new user would."""

from __future__ import annotations

from tests.app.test_flows import _compose, _load, _use_model


def test_composer_says_why_without_a_model_and_offers_few_targets_as_a_list(qtbot, window,
                                                                            model_name):
    w = window
    c = w.compose_page
    assert "No model chosen" in c.check.text()
    _use_model(qtbot, w, model_name)
    row = c.perts.rows[0]
    # Kang knows one perturbation: it is offered as a list, not only as a box to type in
    assert row.pick is not None
    acts = [a.text() for a in row.pick.menu().actions()]
    assert acts == list(w.session.model.space.targets) and "stimulated" in acts
    row.pick.menu().actions()[0].trigger()
    assert row.target.text() == "stimulated"


def test_gene_box_validates_once_the_entry_is_complete(qtbot, window, model_name):
    w = window
    _use_model(qtbot, w, model_name)
    w.nav.setCurrentRow(2)
    c = w.compose_page
    row = c.perts.rows[0]
    row.target.setFocus()
    qtbot.waitUntil(row.target.hasFocus, timeout=5_000)
    row.target.setText("stim")            # typing: no red error yet, the matches are offered
    assert "match" in row.status.text() and "never perturbed" not in row.status.text()
    assert not c.generate_btn.isEnabled()
    row.target.setText("STIMULATED")
    row.target.editingFinished.emit()       # complete: the model's spelling
    assert row.target.text() == "stimulated"
    assert not row.status.isVisible() or not row.status.text()
    row.target.setText("TP53")
    c.cell_type.setFocus()                 # left the box: now it is an error
    row.target.editingFinished.emit()
    assert "never perturbed" in row.status.text()


def test_time_estimate_before_generate_and_a_question_for_long_runs(qtbot, window, model_name,
                                                                    monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from app import settings as cfg

    w = window
    _use_model(qtbot, w, model_name)
    c = _compose(w, n=60)
    c.add_current()
    assert "about" not in c.summary.text()       # nothing measured yet
    with qtbot.waitSignal(w.generation_finished, timeout=120_000):
        c.generate_btn.click()
    rate, steps = (float(x) for x in str(cfg.get("generation_rate")).split(","))
    assert rate > 0 and steps == 4
    w.nav.setCurrentRow(2)
    c.n_cells.setValue(75_000)                    # 150,000 cells with the control
    assert "150,000 cells, about" in c.summary.text()
    cfg.put("generation_rate", "100,4")           # a slow computer: 25 minutes
    c._update_summary()
    assert "about 25 min" in c.summary.text()
    asked = []
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)
    n_before = len(w.session.history)
    c.generate_btn.click()
    assert asked and "150,000 cells" in asked[0] and "25 min" in asked[0]
    assert w.session.busy is None and len(w.session.history) == n_before   # not started


def test_stale_text_is_cleared(qtbot, window, model_name, kang_file, tmp_path):
    w = window
    _load(qtbot, w, kang_file)
    _use_model(qtbot, w, model_name)
    r = w.results_page
    # the train page's name follows the dataset unless typed
    assert w.train_page.name.text().startswith("kang2018")
    other = tmp_path / "second_data.h5ad"
    import shutil

    shutil.copy(kang_file, other)
    _load(qtbot, w, other)
    assert w.train_page.name.text() == "second_data"
    w.train_page.name.setText("my-own-name")
    _load(qtbot, w, kang_file)
    assert w.train_page.name.text() == "my-own-name"
    # a new experiment: no hover line or gene error from the one before
    c = _compose(w, n=40)
    c.add_current()
    with qtbot.waitSignals([w.generation_finished, w.heatmap_updated], timeout=120_000):
        c.generate_btn.click()
    r.heatmap.readout.setText("old hover line")
    r.gene_msg.setText("NOPE: not among the genes")
    with qtbot.waitSignal(w.generation_finished, timeout=120_000):
        c.generate_btn.click()
    assert r.heatmap.readout.text().startswith("Hover over")
    assert r.gene_msg.text() == ""
    # a long error keeps to one short line in the status bar
    w.show_error("x" * 300)
    assert len(w.statusBar().currentMessage()) <= 90


def test_loss_axis_reads_plain_numbers(qtbot):
    from app.plots.loss import LossPlot, plain_number

    p = LossPlot()
    qtbot.addWidget(p)
    ax = p.plot.getAxis("left")
    assert ax.logTickStrings([-3, -2.5, -1, 0, 0.30103, 2], 1, 1) == \
        ["0.001", "", "0.1", "1", "2", "100"]
    assert not ax.autoSIPrefix
    assert plain_number(25000) == "25,000" and plain_number(0.00213) == "0.0021"
