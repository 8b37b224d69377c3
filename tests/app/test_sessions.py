"""Issue 11, sessions and history through the real window with the Kang model: every experiment
kept in the Results history (look again, rename, delete), Copy as command, gene-set scores,
File > Save session / Open session after closing the window (same experiments, names, view),
read-only when the model changed or is missing, and the autosaved session."""

from __future__ import annotations

import json
import shlex

import numpy as np

from tests.app.test_flows import _compose, _load, _use_model


def _run(qtbot, w, cell_type):
    c = _compose(w, cell_type=cell_type, n=60)
    c.queue.clear() if hasattr(c.queue, "clear") else None
    c.add_current()
    with qtbot.waitSignals([w.generation_finished, w.heatmap_updated], timeout=120_000):
        c.generate_btn.click()
    return w.session.experiment


def _history_names(r):
    return [r.history.item(i).text() for i in range(r.history.count())]


def test_history_session_round_trip_and_read_only(qtbot, window, model_name, kang_file,
                                                  tmp_path):
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.views import KINDS

    w = window
    _load(qtbot, w, kang_file)
    _use_model(qtbot, w, model_name)
    first = _run(qtbot, w, "CD14+Mono")
    second = _run(qtbot, w, "CD4T")
    s, r = w.session, w.results_page
    assert [e.experiment for e in s.history] == [first, second]
    # newest first, named after the conditions, with model, cells and time in the tooltip
    assert _history_names(r)[0].startswith("CD4T | stimulated")
    item = r.history.item(1)
    assert "kang" in item.toolTip() and "cells" in item.toolTip()
    # click the older one: it is shown again (and its heatmap recomputed)
    with qtbot.waitSignal(w.heatmap_updated, timeout=60_000):
        r.history.itemClicked.emit(item)
    assert s.experiment is first and r.exp is first
    # rename by editing the item; delete a third one
    item.setText("monocytes, IFN-b")
    assert s.history[0].name == "monocytes, IFN-b"
    third = _run(qtbot, w, "B")
    assert len(s.history) == 3 and s.experiment is third
    r.history.setCurrentRow(0)             # the newest
    r.history_delete.click()
    assert [e.experiment for e in s.history] == [first, second]
    assert s.experiment is second           # the newest left is shown
    # Copy as command: the generate / effects lines with the model, condition, n and seed
    text = w.copy_command()
    assert QApplication.clipboard().text() == text
    gen = [shlex.split(x) for x in text.splitlines() if x.startswith("perturb-studio generate")]
    assert len(gen) == 1
    g = gen[0]
    assert g[g.index("--model") + 1] == model_name and g[g.index("--cell-type") + 1] == "CD4T"
    assert g[g.index("--perturbation") + 1] == "stimulated" and "-n=60" in g
    prov = second.adata.uns["perturb_studio"]
    assert f"--seed={int(prov['seed'])}" in g and f"--steps={int(prov['steps'])}" in g
    assert any(x.startswith("perturb-studio effects") for x in text.splitlines())
    # gene-set score: the interferon-alpha response is higher in stimulated cells
    r.tabs.setCurrentIndex(3 + KINDS.index("genesets"))
    qtbot.waitUntil(lambda: r.views["genesets"].figure is not None, timeout=90_000)
    assert r.gs_collection.currentText() == "Hallmark"
    assert "INTERFERON" in r.gs_set.currentText()
    assert "Liberzon" in r.view_notes["genesets"].text()
    # ... and on the UMAP
    qtbot.waitUntil(lambda: s.embedding is not None, timeout=180_000)
    r.gs_umap.click()
    qtbot.waitUntil(lambda: r._umap_gene is not None and r._umap_gene[0] == r.gs_set
                    .currentText(), timeout=60_000)
    scores = r._umap_gene[1]
    assert len(scores) == len(s.embedding.meta)
    gen = (s.embedding.meta["source"] == "generated").to_numpy()
    cond = s.embedding.meta["condition"].to_numpy()
    stim = gen & np.char.endswith(cond.astype(str), "stimulated")
    ctrl = gen & np.char.endswith(cond.astype(str), "control")
    assert scores[stim].mean() > scores[ctrl].mean() + 0.2
    # save the session with the gene-set tab shown, close the window
    r.tabs.setCurrentIndex(3 + KINDS.index("genesets"))
    folder = tmp_path / "my session"
    with qtbot.waitSignal(w.session_saved, timeout=60_000):
        w.save_session(str(folder))
    man = json.loads((folder / "session.json").read_text())
    assert [e["name"] for e in man["experiments"]] == ["monocytes, IFN-b", s.history[1].name]
    e0 = man["experiments"][0]
    assert e0["model"]["name"] == model_name and len(e0["model"]["weights_sha256"]) == 64
    assert e0["settings"]["n"] == 60 and e0["conditions"][0]["cell_type"] == "CD14+Mono"
    assert man["dataset"]["path"] == str(kang_file)
    assert man["dataset"]["roles"]["perturbation_key"]
    assert man["view"]["tab"] == "genesets"
    saved_x = second.adata.X.copy()
    w.close()
    # a new window opens it: same experiments, names, cells, the gene-set tab again
    w2 = MainWindow()
    qtbot.addWidget(w2)
    with qtbot.waitSignal(w2.models_listed, timeout=30_000):
        w2.show()
    with qtbot.waitSignals([w2.session_opened, w2.heatmap_updated], timeout=120_000):
        w2.open_session(str(folder))
    s2, r2 = w2.session, w2.results_page
    assert [e.name for e in s2.history] == [e["name"] for e in man["experiments"]]
    assert s2.experiment.labels == second.labels
    assert abs(s2.experiment.adata.X - saved_x).max() == 0
    assert not s2.experiment.read_only and s2.experiment.model is not None
    assert r2.current_plot_name() == "genesets"
    qtbot.waitUntil(lambda: r2.views["genesets"].figure is not None, timeout=90_000)
    # the model changed since: read-only, said on the page; the cells still show
    man["experiments"][1]["model"]["weights_sha256"] = "0" * 64
    man["experiments"][0]["model"]["name"] = "no-such-model"
    (folder / "session.json").write_text(json.dumps(man))
    with qtbot.waitSignals([w2.session_opened, w2.heatmap_updated], timeout=120_000):
        w2.open_session(str(folder))
    assert len(s2.history) == 2
    assert "has changed" in s2.experiment.read_only
    assert "Read-only" in r2.header.text() and "has changed" in r2.header.text()
    assert "is not installed" in s2.history[0].read_only
    assert s2.experiment.model is None and r2.heatmap.matrix.size
    for slot in list(w2.jobs.jobs):
        w2.jobs.cancel(slot)
    qtbot.waitUntil(lambda: not w2.jobs.busy(), timeout=30_000)
    w2.close()


def test_autosaved_session_keeps_every_experiment(qtbot, window, model_name, tmp_path):
    w = window
    _use_model(qtbot, w, model_name)
    _run(qtbot, w, "CD14+Mono")
    folder = w.controller.session_autosave_dir()
    qtbot.waitUntil(lambda: (folder / "session.json").exists(), timeout=60_000)
    _run(qtbot, w, "B")
    qtbot.waitUntil(lambda: len(json.loads((folder / "session.json").read_text())
                                ["experiments"]) == 2, timeout=60_000)
    assert folder.is_relative_to(tmp_path)    # under the output folder, never elsewhere


def test_generate_without_a_model_says_why(qtbot, window):
    w = window
    with qtbot.waitSignal(w.error_shown, timeout=10_000) as sig:
        w.controller.generate(None)
    assert "Choose a model" in sig.args[0]


def test_session_io_names_and_manifest_errors(tmp_path):
    """Saving again into the folder a session came from keeps its files; a new experiment never
    overwrites another's file; a folder that is not a session is refused with a reason."""
    from pathlib import Path

    import anndata as ad
    import numpy as np
    import pandas as pd
    import pytest
    import scipy.sparse as sp

    from app.experiment import Experiment
    from app.session import HistoryEntry
    from app.session_io import commands, read_manifest, save_session

    def exp(label):
        obs = pd.DataFrame({"condition": [label] * 3 + ["T | control"] * 3,
                            "cell_type": ["T"] * 6,
                            "perturbation": ["A"] * 3 + ["control"] * 3,
                            "is_control": [False] * 3 + [True] * 3},
                           index=[f"{label}{i}" for i in range(6)])
        a = ad.AnnData(sp.csr_matrix(np.ones((6, 2), np.float32)), obs=obs,
                       var=pd.DataFrame(index=["g1", "g2"]))
        a.layers["counts"] = a.X.copy()
        a.uns["perturb_studio"] = {
            "model": "m", "weights_sha256": "ab" * 32, "seed": 7, "steps": 5, "guidance": 1.5,
            "conditions_json": '[{"cell_type": "T", "perturbations": [{"target": "A", '
                               '"type": "CRISPRa", "dose": null}], "context": {"tissue": '
                               '"blood"}}]'}
        return Experiment.from_generated(a, model_name="m")

    folder = tmp_path / "s"
    e1 = HistoryEntry(exp("T | A"), "first")
    save_session(folder, [e1])
    first_file = e1.file
    e2 = HistoryEntry(exp("T | A"), "second")
    e2.id = e1.id                       # same id (e.g. after a restart): never the same file
    save_session(folder, [e1, e2])
    assert e1.file == first_file and e2.file != first_file
    m = read_manifest(folder)
    assert [x["name"] for x in m["experiments"]] == ["first", "second"]
    assert m["experiments"][0]["settings"] == {"n": 3, "seed": 7, "steps": 5, "guidance": 1.5}
    assert len(list(folder.glob("*.h5ad"))) == 2
    lines = commands(e1.experiment)
    gen = next(x for x in lines if x.startswith("perturb-studio generate"))
    assert ("--model m --cell-type T --perturbation A --perturbation-type CRISPRa "
            "--context tissue=blood -n=3 --with-control --seed=7 --steps=5 --guidance=1.5"
            in gen)
    # the autosave folder drops the cells of experiments it no longer lists
    save_session(folder, [e2], prune=True)
    assert [p.name for p in folder.glob("*.h5ad")] == [Path(e2.file).name]
    with pytest.raises(ValueError, match="not a Perturb Studio session"):
        read_manifest(tmp_path)
    (tmp_path / "session.json").write_text('{"format": "perturb-studio-session", '
                                            '"version": 99}')
    with pytest.raises(ValueError, match="newer Perturb Studio"):
        read_manifest(tmp_path)
