"""Hostile names and broken model folders in the GUI (issue 15 #7, #8).

A model's name, a card, a condition label or a file name is data from a file: it must never
choose where the app writes, render as HTML, or stop the Models page from listing the good models.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PySide6 import QtGui
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextDocument

EVIL = "../../evil<b>x</b>"


def shown(widget) -> str:
    """The text a user sees in a QLabel: rich text rendered, plain text as is."""
    text = widget.text()
    fmt = widget.textFormat()
    rich = fmt == Qt.TextFormat.RichText or (fmt == Qt.TextFormat.AutoText and
                                             QtGui.Qt.mightBeRichText(text))
    return _render(text) if rich else text


def shown_tip(text: str) -> str:
    """The text a tooltip shows (Qt guesses the format the same way as a QLabel)."""
    return _render(text) if QtGui.Qt.mightBeRichText(text) else text


def _render(html_text: str) -> str:
    doc = QTextDocument()
    doc.setHtml(html_text)
    return doc.toPlainText()


def _user_model(kang_model_dir: Path, tmp_path: Path, folder: str, *, name=None, card=None,
                weights: bool = True) -> Path:
    """A copy of the Kang model in the user model folder, its name and card replaced."""
    dst = tmp_path / "user-models" / folder
    dst.mkdir(parents=True)
    config = json.loads((kang_model_dir / "config.json").read_text(encoding="utf-8"))
    if name is not None:
        config["name"] = name
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if weights:
        shutil.copy2(kang_model_dir / "model.safetensors", dst / "model.safetensors")
    if card is not None:
        (dst / "card.json").write_text(card if isinstance(card, str) else json.dumps(card),
                                       encoding="utf-8")
    return dst


def _relist(qtbot, w, *names) -> None:
    w.refresh_models()
    qtbot.waitUntil(lambda: "models" not in w.jobs.jobs and
                    all(any(str(i.name) == n for i in w.models_page.infos) for n in names),
                    timeout=30_000)


# -- #7: file names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [EVIL, "../../../../escaped", "/etc/cron.d/x", "..", ".",
                                  "a/../../b", "C:\\Windows\\x", "", "x" * 500, "\x00\n\t",
                                  "con", ".hidden"])
def test_autosave_path_stays_in_the_output_folder(qtbot, window, tmp_path, name):
    w = window
    w.act_autosave.setChecked(True)
    w.session.model = SimpleNamespace(name=name)
    try:
        p = w.controller.autosave_path("generated")
    finally:
        w.session.model = None
    folder = (tmp_path / "out" / "perturb-studio").resolve()
    assert p.resolve().parent == folder  # a file directly in the folder, never elsewhere
    assert p.name.endswith("_generated.h5ad") and not p.name.startswith(".")
    assert len(p.name) < 120 and "/" not in p.name and "\\" not in p.name


def test_safe_filename_and_path_inside(tmp_path):
    from app.paths import path_inside, safe_filename

    assert safe_filename(EVIL) == "_.._evil_b_x__b_"
    assert safe_filename("kang-ifnb-pbmc") == "kang-ifnb-pbmc"
    assert safe_filename("A+B_1.5") == "A+B_1.5"
    assert safe_filename("...") == "model" and safe_filename("") == "model"
    assert safe_filename("NUL") == "_NUL"
    with pytest.raises(ValueError, match="would be written outside"):
        path_inside(tmp_path, "../x.h5ad")
    with pytest.raises(ValueError, match="would be written outside"):
        path_inside(tmp_path, "")


def test_hostile_model_name_is_shown_literally_and_saved_inside(qtbot, window, kang_model_dir,
                                                                kang_file, tmp_path):
    """A model named ``../../evil<b>x</b>``: every label shows the name as written (no bold),
    and the autosaved file lands directly in <output>/perturb-studio with a safe name."""
    w = window
    _user_model(kang_model_dir, tmp_path, "evil-model", name=EVIL)
    _relist(qtbot, w, EVIL)
    row = [str(i.name) for i in w.models_page.infos].index(EVIL)
    assert EVIL in w.models_page.list.item(row).text()
    assert w.models_page.select(EVIL)
    with qtbot.waitSignal(w.model_loaded, timeout=60_000):
        w.models_page.use_btn.click()
    assert w.session.model.name == EVIL
    assert f"In use: {EVIL}" in shown(w.models_page.active)
    assert w.model_label.text() == f"Model: {EVIL}"          # status bar
    assert w.model_label.textFormat() == Qt.TextFormat.PlainText
    c = w.compose_page
    assert f"Model {EVIL}: choose" in shown(c.subtitle)      # composer subtitle
    assert "&lt;b&gt;" in c.subtitle.text()
    # perturb page (needs a dataset)
    with qtbot.waitSignal(w.dataset_loaded, timeout=60_000):
        w.load_dataset(str(kang_file))
    assert f"Model: {EVIL}." in shown(w.perturb_page.status)
    # generate: autosaved inside the output folder, the header says where, literally
    w.act_autosave.setChecked(True)
    c.cell_type.setCurrentText("CD14+Mono")
    c.perts.rows[0].target.setText("stimulated")
    c.n_cells.setValue(20)
    c.steps.setValue(2)
    assert c.generate_btn.isEnabled(), c.check.text()
    c.generate_btn.click()
    qtbot.waitUntil(lambda: w.session.experiment is not None and w.session.busy is None,
                    timeout=120_000)
    saved = Path(w.session.experiment.saved_to)
    folder = tmp_path / "out" / "perturb-studio"
    assert saved.parent == folder and saved.is_file()
    assert saved.resolve().parent == folder.resolve()
    assert "_.._evil_b_x__b__generated.h5ad" in saved.name
    assert [p for p in folder.rglob("*") if p.is_file()] == [saved]  # no sub-folders
    header = shown(w.results_page.header)
    assert EVIL in header and f"Saved to {saved}" in header
    assert "<b>x</b>" not in w.results_page.header.text().replace(f"<b>{EVIL}", "")
    # a failed model load says so and keeps the model in use
    # (its weights vanish between listing and loading)
    gone = _user_model(kang_model_dir, tmp_path, "no-weights", name="no<i>weights</i>")
    _relist(qtbot, w, "no<i>weights</i>")
    (gone / "model.safetensors").unlink()
    w.models_page.select("no<i>weights</i>")
    with qtbot.waitSignal(w.error_shown, timeout=60_000) as sig:
        w.models_page.use_btn.click()
    assert "model.safetensors" in sig.args[0]
    active = shown(w.models_page.active)
    assert "Could not load no<i>weights</i>" in active and f"In use: {EVIL}" in active
    assert w.session.model.name == EVIL


def test_error_box_shows_messages_as_plain_text(qtbot, window):
    from PySide6.QtWidgets import QMessageBox

    w = window
    w.show_error("cannot read <b>bold</b>.h5ad")
    box = w.findChild(QMessageBox, "error-box")
    assert box.textFormat() == Qt.TextFormat.PlainText and "<b>bold</b>" in box.text()
    box.close()


def test_plots_escape_labels(qtbot):
    import numpy as np

    from app.effect_table import PlotSpec
    from app.plots.effect_plot import EffectPlot
    from app.plots.embedding import EmbeddingPlot

    e = EmbeddingPlot()
    qtbot.addWidget(e)
    e.set_coords(np.zeros((2, 2), dtype=np.float32))
    e.color_by_category(["<b>A</b>", "B&C"], title="by <i>x</i>")
    labels = [lab.item.toPlainText() for _s, lab in e.legend.items]
    assert labels == ["<b>A</b>", "B&C"]
    assert e.plot.titleLabel.item.toPlainText() == "by <i>x</i>"
    v = EffectPlot()
    qtbot.addWidget(v)
    v.show_spec(PlotSpec(genes=["G1", "<i>G2</i>"], x=np.array([1.0, -1.0]),
                         y=np.array([2.0, 0.1]), classes=np.array(["up", "ns"]),
                         xlabel="x <b>", ylabel="y & z", title="<b>STAT1</b>+A&B"))
    assert v.plot.titleLabel.item.toPlainText().startswith("<b>STAT1</b>+A&B")
    assert v.xlabel() == html.escape("x <b>")   # pyqtgraph renders the label as HTML
    v.show_spec(PlotSpec(message="<b>no plot</b>", title="t"))
    assert v.showing_message and v.message.text() == "<b>no plot</b>"
    assert v.message.textFormat() == Qt.TextFormat.PlainText


def test_composer_check_escapes_typed_target(qtbot, window, model_name):
    w = window
    w.models_page.select(model_name)
    with qtbot.waitSignal(w.model_loaded, timeout=60_000):
        w.models_page.use_btn.click()
    row = w.compose_page.perts.rows[0]
    row.target.setText("<b>NOTAGENE</b>")
    assert "'<b>NOTAGENE</b>' was never perturbed" in shown(row.status)
    assert row.status.textFormat() == Qt.TextFormat.PlainText


# -- #8: broken model folders -------------------------------------------------------------------
BAD_CARDS = {
    "card-list": "[1, 2, 3]",
    "card-string": '"just a string"',
    "card-odd-metrics": {"title": "odd <script>", "metrics": [{"r2": 0.5}, 7, "x", None],
                         "verdicts": 7, "training": ["not", "a", "dict"], "limitations": 3,
                         "held_out_metrics": {"a": [1, 2]}, "description": {"x": 1}},
    "card-metrics-dict": {"metrics": {"r2": "high", "nested": {"a": None}, "n": 10 ** 30}},
}


def test_card_html_survives_malformed_cards():
    """The card view renders any card shape (what the engine lets through or not): no
    exception, values escaped, and a card that is not an object is said to be so."""
    from app.panels.models import safe_card_html
    from engine.conditions.spec import ConditionSpace

    def info(card, **kw):
        return SimpleNamespace(name="m<b>", path=Path("/x/m"), source="user", card=card,
                               space=kw.get("space", ConditionSpace()), n_genes=kw.get("n", 3),
                               backbone="mlp")

    for card in [*BAD_CARDS.values(), None, {}, {"metrics": [None]}, {"training": {"n_cells": "x",
                 "seconds": float("nan"), "seed": True}}, {"verdicts": ["NOT better", 3]}]:
        card = json.loads(card) if isinstance(card, str) else card
        text = _render(safe_card_html(info(card)))
        title = card.get("title", "m<b>") if isinstance(card, dict) else "m<b>"
        assert text.startswith(title) and "Folder: /x/m" in text
    assert "card.json holds a list" in _render(safe_card_html(info([1, 2, 3])))
    assert "odd <script>" in _render(safe_card_html(info(BAD_CARDS["card-odd-metrics"])))
    # a space or gene count of the wrong type: the problem is shown instead of the card
    text = _render(safe_card_html(info({}, space=SimpleNamespace(cell_types=3), n="many")))
    assert "cannot be shown" in text and "m<b>" in text


def test_models_page_survives_malformed_cards(qtbot, window, kang_model_dir, tmp_path):
    """Model folders with cards of any shape: each is listed, either as a model whose card
    shows what it can, or greyed out with the reason; the shipped models stay listed."""
    w = window
    for folder, card in BAD_CARDS.items():
        _user_model(kang_model_dir, tmp_path, folder, name=folder, card=card)
    w.refresh_models()
    page = w.models_page
    shipped = {p.name for p in (Path(__file__).resolve().parents[2] / "resources" /
                                "models").iterdir() if (p / "config.json").exists()}
    qtbot.waitUntil(lambda: "models" not in w.jobs.jobs and
                    shipped <= {i.path.name for i in page.infos}, timeout=30_000)
    good = {i.path.name for i in page.infos}
    broken = {p.name: why for p, why in page.broken}
    for folder in BAD_CARDS:
        assert folder in good or folder in broken, (folder, good, broken)
        rows = [page.list.item(i).text() for i in range(page.list.count())]
        assert any(folder in t for t in rows)
    for i, info in enumerate(page.infos):
        page.list.setCurrentRow(i)
        assert str(info.name) in page.card.toPlainText() or "card" in page.card.toPlainText()
    if "card-list" in good:
        page.select("card-list")
        assert "card.json holds a list" in page.card.toPlainText()
    else:
        assert "card.json" in broken["card-list"]
    assert w.last_error is None


def test_broken_folders_are_listed_greyed_with_their_reason(qtbot, window, tmp_path,
                                                            monkeypatch):
    """The page lists every good model, then each folder the registry could not read, greyed
    out, not selectable, with the reason (engine.registry.broken_models)."""
    from engine import registry

    bad = tmp_path / "user-models" / "half<b>copied"
    bad.mkdir(parents=True)
    why = f"{bad}/config.json is not valid JSON: Expecting value: line 1 column 1 (char 0)"
    monkeypatch.setattr(registry, "broken_models", lambda: [(bad, why)], raising=False)
    w = window
    w.refresh_models()
    page = w.models_page
    qtbot.waitUntil(lambda: "models" not in w.jobs.jobs and bool(page.broken), timeout=30_000)
    n = len(page.infos)
    assert n >= 1 and page.list.count() == n + 1
    item = page.list.item(n)
    assert item.text().startswith("⚠ half<b>copied\n")
    flat = " ".join(item.text().split())  # the reason is wrapped onto a few lines
    assert "cannot be used: config.json is not valid JSON" in flat
    assert not item.flags() & Qt.ItemFlag.ItemIsSelectable
    assert "not valid JSON: Expecting value" in " ".join(shown_tip(item.toolTip()).split())
    assert str(bad) in shown_tip(item.toolTip())
    page.list.setCurrentRow(n)  # clicking it explains, and nothing can be used
    assert page.current() is None and not page.use_btn.isEnabled()
    assert "cannot be used" in page.card.toPlainText() and why in page.card.toPlainText()
    page.list.setCurrentRow(0)
    assert page.current() is page.infos[0] and page.use_btn.isEnabled()


def test_broken_user_model_does_not_hide_the_others(qtbot, window, tmp_path):
    """Real unreadable folders among good models: all good ones are listed, and each broken
    folder is named in a greyed row (engine.registry.broken_models)."""
    from engine import registry

    w = window
    root = tmp_path / "user-models"
    for name, text in (("bad-json", "{broken"), ("no-genes", json.dumps({
            "format": "perturb-studio-model", "format_version": 1}))):  # no genes
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(text)
    w.refresh_models()
    page = w.models_page
    qtbot.waitUntil(lambda: "models" not in w.jobs.jobs and bool(page.infos), timeout=30_000)
    assert len(page.infos) >= 4, [i.name for i in page.infos]  # the shipped models
    assert {i.path.name for i in page.infos}.isdisjoint({"bad-json", "no-genes"})
    assert w.last_error is None
    rows = [page.list.item(i).text() for i in range(len(page.infos), page.list.count())]
    assert any(r.startswith("⚠ bad-json\n") for r in rows), rows
    assert any(r.startswith("⚠ no-genes\n") for r in rows), rows
    assert {p.name for p, _why in registry.broken_models()} >= {"bad-json", "no-genes"}
