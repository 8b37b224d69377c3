"""Issue 10 through the real window with a 3-member ensemble trained on synthetic data (B | A+B
held out): the composer's evidence labels, the effect table with interval, baseline and real
effect, the heatmap's extra rows, the effect CSV, and the UMAP's choice of real cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PySide6.QtCore import Qt

from tests.app.test_flows import _load, _use_model


def _queue(w, cell_type, targets):
    c = w.compose_page
    c.cell_type.setCurrentText(cell_type)
    while len(c.perts.rows) < len(targets):
        c.perts.add_row()
    for row, t in zip(c.perts.rows, targets, strict=False):
        row.target.setText(t)
    c.add_current()
    return c


def _headers(r):
    m = r.de_model
    return [m.headerData(i, Qt.Orientation.Horizontal) for i in range(m.columnCount())]


def _generate(qtbot, w, n=60):
    c = w.compose_page
    c.n_cells.setValue(n)
    c.steps.setValue(4)
    with qtbot.waitSignals([w.generation_finished, w.heatmap_updated, w.de_updated],
                           timeout=120_000):
        c.generate_btn.click()


def test_ensemble_effects_baselines_real_cells_and_evidence(qtbot, ensemble_name, window,
                                                            synthetic_file, tmp_path):
    from app.panels.composer import EVIDENCE_ROLE, WARN

    w = window
    _load(qtbot, w, synthetic_file)
    assert w.session.schema_ok
    _use_model(qtbot, w, ensemble_name)
    assert w.session.model.members == 3
    # composer: each queued condition says its evidence class and the card's score for it
    c = _queue(w, "T", ["A"])
    _queue(w, "B", ["A", "B"])
    assert c.queue.count() == 2
    measured, combo = c.queue.item(0), c.queue.item(1)
    assert "measured in training · held-out R2 0.91 vs mean shift baseline 0.55" in \
        measured.text()
    assert measured.data(EVIDENCE_ROLE).kind == "measured" and measured.icon().isNull()
    assert "new cell type for this perturbation · held-out R2 0.42 vs additive baseline 0.71" \
        in combo.text()
    assert combo.data(EVIDENCE_ROLE).below_baseline and not combo.icon().isNull()
    assert combo.foreground().color().name() == WARN
    assert "baseline did better" in c.check.text()          # the condition being composed
    _generate(qtbot, w)
    r = w.results_page
    exp = w.session.experiment
    first, second = exp.labels
    # the effect table of the measured condition: interval, agreement, baseline, real effect
    assert r.de_label == first
    assert _headers(r) == ["gene", "effect (log2 FC)", "90% interval", "members agree",
                           "confidence", "mean shift baseline", "real (log2 FC)"]
    assert r.de_model.rowCount() == len(w.session.model.genes)
    assert r.de_view.has_interval and r.de_view.members == 3
    assert "3 ensemble members" in r.de_note.text() and "single member" not in r.de_note.text()
    assert "measured in training" in r.evidence.text() and WARN not in r.evidence.text()
    assert r.volcano.xlabel() == "predicted effect (log2 fold change)"
    assert r.volcano.ylabel() == "confidence: |effect| / 90% interval width"
    assert not r.volcano.showing_message
    # the real effect is the data's: genes 10-19 go up under A in T cells
    f = r.de_frame.set_index("gene")
    assert (f.loc[[f"G{i}" for i in range(10, 20)], "real_log2fc"] > 1).all()
    # the held-out combination: additive baseline, real cells of it, a warning
    with qtbot.waitSignal(w.de_updated, timeout=60_000):
        r.compare.setCurrentText(second)
    assert r.de_label == second
    heads = _headers(r)
    assert "additive baseline" in heads and "real (log2 FC)" in heads
    assert WARN in r.evidence.text() and "new cell type" in r.evidence.text()
    # heatmap: each condition's baseline and real cells as extra labelled entries
    assert r.heat_extras.isEnabled()
    n = len(r.heatmap.col_labels)
    r.heat_extras.setChecked(True)
    cols = r.heatmap.col_labels
    assert len(cols) == n + 4
    assert cols[:3] == [first, f"{first} · baseline (mean shift)", f"{first} · real cells"]
    assert cols[4] == f"{second} · baseline (additive)"
    real_col = r.heatmap.matrix[:, 2]
    assert np.abs(real_col).max() > 0
    r.heat_extras.setChecked(False)
    assert len(r.heatmap.col_labels) == n
    # the effect CSV: plain names, no p-values
    assert w.export("de", str(tmp_path / "effects.csv"))
    df = pd.read_csv(tmp_path / "effects.csv")
    assert {"predicted_log2fc", "interval90_low_log2fc", "interval90_high_log2fc",
            "members_agree_on_sign", "baseline_additive_log2fc", "real_log2fc"} <= set(df.columns)
    assert not {"pval", "padj", "mean_a", "mean_b"} & set(df.columns)
    # the dataset has the model's genes: it is the UMAP's real cells
    qtbot.waitUntil(lambda: w.session.embedding is not None, timeout=180_000)
    assert "real cells from synthetic.h5ad" in r.umap_status.text()
    assert r.umap.coords.shape[0] == exp.adata.n_obs + 320


def test_umap_shows_the_reference_cells_when_the_dataset_genes_do_not_match(
        qtbot, ensemble_name, window, mismatched_file):
    w = window
    _load(qtbot, w, mismatched_file)
    _use_model(qtbot, w, ensemble_name)
    _queue(w, "T", ["A"])
    _generate(qtbot, w, n=40)
    exp = w.session.experiment
    qtbot.waitUntil(lambda: w.session.embedding is not None, timeout=180_000)
    r = w.results_page
    text = r.umap_status.text()
    assert "other_genes.h5ad shares only 10 of 60 model genes" in text, text
    n_ref = w.session.model.n_reference_cells
    assert n_ref == 280                          # 7 training groups of 40 (B | A+B held out)
    assert f"model's own {n_ref} reference cells" in text
    emb = w.session.embedding
    assert emb.n_real == n_ref
    assert r.umap.coords.shape[0] == exp.adata.n_obs + n_ref
    ref = emb.meta["source"] == "real (model's reference)"
    assert ref.sum() == n_ref and set(emb.meta.loc[ref, "cell type"]) == {"T", "B"}
