"""Models page: shipped and user models with their cards; import a model folder.

Model folders that cannot be read are listed too, greyed out and not selectable, with the reason;
they never hide the good ones. A card is model-controlled data: every value in it is escaped, and
a card of unexpected shape shows what could be read plus the problem, never an exception.
"""

from __future__ import annotations

import html
import logging
import os
import textwrap
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..richtext import plain, tip

log = logging.getLogger(__name__)
BROKEN_ROLE = Qt.ItemDataRole.UserRole + 1  # (folder, reason) of a folder that cannot be read


class ModelsPanel(QWidget):
    model_chosen = Signal(object)  # ModelInfo
    import_requested = Signal()
    refresh_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.infos: list = []
        self.broken: list[tuple[Path, str]] = []
        self.list = QListWidget()
        self.list.setToolTip("Models you can generate with. Shipped models come with the app; "
                             "your own appear after training or importing.")
        self.list.setMinimumWidth(240)
        self.list.currentRowChanged.connect(self._show_card)
        self.list.itemActivated.connect(lambda _it: self._use())
        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(True)
        self.card.setToolTip("What this model conditions on, its genes, training data and "
                             "held-out metrics")
        self.use_btn = QPushButton("Use this model")
        self.use_btn.setToolTip("Load the selected model for composing and generating "
                                "(double-click also works)")
        self.use_btn.clicked.connect(self._use)
        self.import_btn = QPushButton("Import model folder…")
        self.import_btn.setToolTip("Add a model folder (config.json + model.safetensors) to your "
                                   "models (Ctrl+I)")
        self.import_btn.clicked.connect(self.import_requested)
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.setToolTip("Look for new models on disk")
        self.refresh_btn.clicked.connect(self.refresh_requested)
        self.device = QLabel("Device: detected when a model is loaded")
        self.device.setToolTip("Where generation runs: a GPU (CUDA / Apple MPS) or the CPU")
        self.active = QLabel("No model in use.")  # rich text: names in it are escaped
        self.active.setWordWrap(True)
        self.active.setTextFormat(Qt.TextFormat.RichText)
        # the outcome of the last import / listing, as plain text (it quotes folder names)
        self.message = plain(QLabel())
        self.message.setObjectName("models-message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("<h2>Models</h2>"))
        ll.addWidget(self.list, 1)
        b = QHBoxLayout()
        b.addWidget(self.import_btn)
        b.addWidget(self.refresh_btn)
        ll.addLayout(b)
        ll.addWidget(self.message)
        ll.addWidget(self.device)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.card, 1)
        row = QHBoxLayout()
        row.addWidget(self.active, 1)
        row.addWidget(self.use_btn)
        rl.addLayout(row)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 3)
        self.splitter = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(split)

    def set_models(self, infos: list, *, select: str | None = None,
                   broken: list[tuple[Path, str]] | None = None) -> None:
        """List the good models (rows 0 … len(infos)-1, so a row is an index into ``infos``),
        then each unreadable folder of ``broken`` greyed out, with its reason."""
        current = select or (self.current().name if self.current() else None)
        self.infos = list(infos)
        self.broken = [(Path(p), str(why)) for p, why in (broken or [])]
        with _blocked(self.list):
            self.list.clear()
        row_to_select = 0
        for i, info in enumerate(self.infos):
            badge = "shipped" if info.source == "shipped" else "yours"
            try:
                n_genes = f"{int(info.n_genes):,} genes"
            except (TypeError, ValueError):
                n_genes = "? genes"
            item = QListWidgetItem(f"{info.name}\n   {badge} · {n_genes}")
            item.setData(Qt.ItemDataRole.UserRole, str(info.name))
            item.setToolTip(tip(info.path))
            self.list.addItem(item)
            if str(info.name) == str(current):
                row_to_select = i
        for folder, why in self.broken:
            # the row names the folder already: say the rest (the tooltip has it all)
            short = why.replace(f"{folder}{os.sep}", "").replace(str(folder), "this folder")
            lines = textwrap.wrap(f"cannot be used: {short}", 36, max_lines=3, placeholder=" …")
            item = QListWidgetItem("\n".join([f"⚠ {folder.name}"] + [f"   {x}" for x in lines]))
            item.setData(BROKEN_ROLE, (str(folder), why))
            # shown, readable, hoverable, but never selected or used
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            item.setForeground(QBrush(QColor(128, 128, 128)))
            item.setToolTip(tip("\n".join([str(folder), *textwrap.wrap(why, 100)])))
            self.list.addItem(item)
        if self.infos:
            before = self.list.currentRow()
            self.list.setCurrentRow(row_to_select)
            if before == row_to_select:  # no currentRowChanged: show the card here
                self._show_card(row_to_select)
        else:
            self.card.setHtml("<p>No models found. Import a model folder or train one on the "
                              "<b>Train</b> page.</p>" + self._broken_html())
        self.use_btn.setEnabled(self.current() is not None)

    def _broken_html(self) -> str:
        if not self.broken:
            return ""
        return ("<h3>Model folders that cannot be used</h3><ul>" + "".join(
            f"<li><b>{_e(p.name)}</b> ({_e(p)}): {_e(why)}</li>" for p, why in self.broken)
            + "</ul><p>Fix or remove these folders, then press Refresh.</p>")

    def set_message(self, text: str, *, error: bool = False) -> None:
        """Say how the last import or listing went (plain text; empty hides it)."""
        self.message.setText(text)
        self.message.setStyleSheet("color: #b00020;" if error else "color: #1b5e20;")
        self.message.setVisible(bool(text))

    def current(self):
        row = self.list.currentRow()
        return self.infos[row] if 0 <= row < len(self.infos) else None

    def select(self, name: str) -> bool:
        for i, info in enumerate(self.infos):
            if info.name == name:
                self.list.setCurrentRow(i)
                return True
        return False

    def _use(self) -> None:
        info = self.current()
        if info is not None:
            self.model_chosen.emit(info)

    def _show_card(self, row: int) -> None:
        info = self.current()
        self.use_btn.setEnabled(info is not None)
        if info is not None:
            self.card.setHtml(safe_card_html(info))
            return
        item = self.list.item(row) if row >= 0 else None
        bad = item.data(BROKEN_ROLE) if item is not None else None
        if bad:
            folder, why = bad
            self.card.setHtml(f"<h2>{_e(Path(folder).name)}</h2><p style='color:#b00020'>"
                              f"This model folder cannot be used: {_e(why)}</p>"
                              f"<p style='color:#666'>Folder: {_e(folder)}</p>")

    def set_active(self, text: str) -> None:
        self.active.setText(text)

    def set_device(self, text: str) -> None:
        self.device.setText(text)


class _blocked:
    """Block a widget's signals for a ``with`` block."""

    def __init__(self, w) -> None:
        self.w = w

    def __enter__(self):
        self.old = self.w.blockSignals(True)

    def __exit__(self, *_exc) -> None:
        self.w.blockSignals(self.old)


def _e(x) -> str:
    return html.escape(str(x))


def safe_card_html(info) -> str:
    """:func:`card_html`, or, for a card of unexpected shape, the model's name and folder with
    the problem (a broken card never breaks the page)."""
    try:
        return card_html(info)
    except Exception as e:  # noqa: BLE001 - the card is data from a model folder
        log.warning("card of %s cannot be shown: %r", getattr(info, "path", "?"), e)
        return (f"<h2>{_e(getattr(info, 'name', '?'))}</h2><p style='color:#b00020'>The card "
                f"of this model (card.json) cannot be shown: {_e(type(e).__name__)}: {_e(e)}. "
                "The model may still work.</p>"
                f"<p style='color:#666'>Folder: {_e(getattr(info, 'path', ''))}</p>")


def _list(values, limit: int = 12) -> str:
    values = list(values)
    s = ", ".join(_e(v) for v in values[:limit])
    return s + (f", … ({len(values)} in all)" if len(values) > limit else "") if values else "—"


def card_html(info) -> str:
    """A model card a biologist can read: what it conditions on, data, metrics, licence."""
    raw, space = info.card, info.space
    card = dict(raw) if isinstance(raw, dict) else {}
    title = card.get("title") or info.name
    out = [f"<h2>{_e(title)}</h2>"]
    if raw and not isinstance(raw, dict):
        out.append(f"<p style='color:#b00020'>card.json holds a {_e(type(raw).__name__)}, not "
                   "an object with the model's description: the card cannot be shown.</p>")
    plain_words = card.get("plain")
    if isinstance(plain_words, list | str) and plain_words:
        text = plain_words if isinstance(plain_words, str) else " ".join(map(str, plain_words))
        out.append(f"<p style='font-size:11pt'>{_e(text)}</p>")
    if card.get("description"):
        out.append(f"<p>{_e(card['description'])}</p>")
    members = card.get("members")
    if members is None and isinstance(card.get("training"), dict):
        members = card["training"].get("members")      # a model trained in the app
    ens = (f" · ensemble of {int(members)} members" if isinstance(members, int) and members > 1
           else " · a single member (no uncertainty estimate)" if members == 1 else "")
    out.append(f"<p><i>{'Shipped with the app' if info.source == 'shipped' else 'Your model'}"
               f"</i> · {_count(info.n_genes)} genes"
               + (f" · backbone {_e(info.backbone)}" if info.backbone else "") + ens + "</p>")
    out.append(_evidence_html(card.get("evidence")))
    out.append("<h3>What it conditions on</h3><table cellpadding='3'>")
    rows = [("Cell types", _list(space.cell_types) if space.cell_types else "none (one cell "
             "population)")]
    if space.targets:
        rows.append(("Perturbation targets", _list(space.targets)))
        if space.perturbation_types:
            rows.append(("Perturbation types", _list(space.perturbation_types)))
        rows.append(("Combined at most", str(space.max_perturbations)))
    else:
        rows.append(("Perturbations", "none: generates unperturbed cells"))
    if space.has_dose:
        lo, hi = space.dose_range or (None, None)
        note = " (simulated)" if space.simulated_dose else ""
        rows.append(("Dose", f"{lo:g} – {hi:g}{note}" if lo is not None else f"yes{note}"))
    for level in space.context_levels:
        rows.append((level.capitalize(), _list(space.context_values.get(level, []))))
    rows.append(("Trained conditions", f"{len(space.seen):,}"))
    out += [f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows]
    out.append("</table>")
    anchor = getattr(info, "anchor", ())
    if anchor:
        out.append("<p><b>Conditions never measured:</b></p><ul>"
                   + "".join(f"<li>{_e(x)}</li>" for x in anchor) + "</ul>")
    desc_done = bool(card.get("description"))
    if card.get("summary") and not desc_done:
        out.insert(1, f"<p>{_e(card['summary'])}</p>")
    data_rows = [(label, card.get(key)) for key, label in
                 (("data", "Data"), ("citation", "Cite"), ("split", "Held-out split"),
                  ("notes", "Notes"), ("license", "Licence"), ("licence", "Licence"))
                 if card.get(key)]
    if data_rows:
        out.append("<h3>Training data</h3>")
        out += [f"<p><b>{k}:</b> {_e(v if not isinstance(v, list) else '; '.join(map(str, v)))}"
                "</p>" for k, v in data_rows]
    metrics = card.get("metrics") or card.get("held_out_metrics") or card.get("evaluation")
    if metrics:
        out.append("<h3>Held-out metrics</h3>")
        out.append("<p style='color:#555'>On cells set aside before training. r2: how well mean "
                   "expression is reproduced (higher is better); pearson_delta: agreement of "
                   "the predicted change from control with the real change (higher is better); "
                   "energy_ratio: distance to real cells relative to the control's (lower is "
                   "better). Baselines: control = no change; mean_shift = average effect seen "
                   "elsewhere; additive = sum of single effects (additive_heldout: the singles "
                   "measured in the held-out cells). real_train is not a baseline: the real "
                   "training cells of the same condition, scored the same way, show how noisy "
                   "the small held-out groups are.</p>")
        out.append(_metrics_html(metrics))
    if card.get("verdicts"):
        out.append("<h3>Against the baselines</h3><ul>")
        verdicts = card["verdicts"]
        for v in (verdicts if isinstance(verdicts, list) else [verdicts]):
            colour = ("#a15c00" if "NOT" in str(v) else
                      "#555" if "not a baseline" in str(v) else "#1b5e20")
            out.append(f"<li style='color:{colour}'>{_e(v)}</li>")
        out.append("</ul>")
    tr = card.get("training")
    if isinstance(tr, dict):
        names = {"data_file": "Data file", "n_cells": "Cells", "n_genes": "Genes",
                 "n_conditions": "Conditions", "seed": "Seed", "device": "Trained on",
                 "seconds": "Training time (s)", "flow_steps": "Flow steps",
                 "members": "Ensemble members",
                 "ae_epochs": "Autoencoder epochs"}
        rows = [(lab, tr[k]) for k, lab in names.items() if tr.get(k) not in (None, "")]
        if rows:
            out.append("<h3>Training</h3><table cellpadding='3'>" + "".join(
                f"<tr><td><b>{_e(k)}</b></td><td>"
                f"{f'{v:,}' if isinstance(v, int) else f'{v:.1f}' if isinstance(v, float) else _e(v)}"
                "</td></tr>" for k, v in rows) + "</table>")
    lim = card.get("limitations")
    if lim:
        out.append("<h3>Limitations</h3><ul>" + "".join(
            f"<li>{_e(x)}</li>" for x in (lim if isinstance(lim, list) else [lim])) + "</ul>")
    if card.get("intended_use"):
        out.append(f"<p><b>Intended use:</b> {_e(card['intended_use'])}</p>")
    out.append(f"<p style='color:#666'>Folder: {_e(info.path)}</p>")
    return "\n".join(out)


def _evidence_html(evidence) -> str:
    """The card's evidence table (engine.cards.evidence_entry rows): for each kind of condition,
    the model's held-out R2, the best simple baseline's, and how often the 90% interval held
    the real effect; a row where the baseline did better in the warning colour. "" when the
    card has none; rows of an unexpected shape are skipped."""
    if not isinstance(evidence, dict) or not evidence:
        return ""
    from engine.effects import EVIDENCE_LABELS, METRIC_WORDS, judge_entry

    def num(d, k):
        v = d.get(k) if isinstance(d, dict) else None
        return float(v) if isinstance(v, int | float) and v == v else None

    rows = []
    for kind, e in evidence.items():
        if not isinstance(e, dict) or num(e.get("model"), "r2_top100") is None:
            continue
        r2 = num(e["model"], "r2_top100")
        # a rule chosen on the scored folds: show what choosing it is worth on an unseen fold
        nested = num(e["model"], "r2_top100_nested")
        base = e.get("baseline") if isinstance(e.get("baseline"), dict) else {}
        b2 = num(base, "r2_top100")
        cov = e.get("coverage") if isinstance(e.get("coverage"), dict) else {}
        c_aware, c_raw = num(cov, "coverage_noise_aware"), num(cov, "coverage")
        # judged as the composer and results page judge it (engine.effects.judge_entry): R2 on
        # the baseline's own conditions where it covers only some, the nested estimate, the
        # cell types and metrics the card lists as below the baseline
        _, judged, below_on = judge_entry(e)
        below = bool(below_on)
        same = (judged or {}).get("model_r2_on_same")
        n_b = num(base, "n")
        style = " style='color:#a15c00'" if below else ""
        why = [w for w in below_on if w != METRIC_WORDS["r2_top100"]]
        cells = [("⚠ " if below else "") + _e(EVIDENCE_LABELS.get(str(kind), kind)),
                 (f"{r2:.2f}" if nested is None else
                  f"{nested:.2f} ({r2:.2f} on the folds its rule was chosen on)")
                 + (f"<br>below the baseline on {_e(', '.join(why))}" if why else ""),
                 (f"{_e(str(base.get('name', '')).replace('_', ' '))} {b2:.2f}"
                  + (f" (on {n_b:.0f} conditions; model {same:.2f} there)"
                     if same is not None and n_b is not None else ""))
                 if b2 is not None else "—",
                 (f"{c_aware:.0%}" + (f" ({c_raw:.0%} raw)" if c_raw is not None else ""))
                 if c_aware is not None else (f"{c_raw:.0%}" if c_raw is not None else "—"),
                 _e(e.get("source", "")) if isinstance(e.get("source"), str) else ""]
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    return ("<h3>How far to trust each kind of condition</h3><p style='color:#555'>On cells set "
            "aside before training: R2 of the top-100 changed genes for the model and for the "
            "best simple baseline on the same conditions, and how often the model's 90% "
            "interval held the real effect (allowing for the noise of the held-out cells).</p>"
            "<table border='1' cellspacing='0' cellpadding='3'><tr><th>kind of condition</th>"
            "<th>model R2</th><th>baseline R2</th><th>interval held the real effect</th>"
            "<th>from</th></tr>" + "".join(rows) + "</table>")


def _count(n) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError, OverflowError):
        return _e(n)


def _metrics_html(metrics) -> str:
    """Metrics as a table: list of row dicts, dict of dicts, or a flat dict."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else _e(v)

    if isinstance(metrics, list) and metrics and isinstance(metrics[0], dict):
        metrics = [r for r in metrics if isinstance(r, dict)]
        cols = list(dict.fromkeys(k for r in metrics for k, v in r.items()
                                  if not isinstance(v, dict | list)))
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                       for r in metrics[:30])
        return f"<table border='1' cellspacing='0' cellpadding='3'><tr>{head}</tr>{body}</table>"
    if isinstance(metrics, dict):
        if all(isinstance(v, dict) for v in metrics.values()):
            rows = [{"": k, **v} for k, v in metrics.items()]
            return _metrics_html(rows)
        return "<table cellpadding='3'>" + "".join(
            f"<tr><td><b>{_e(k)}</b></td><td>{fmt(v)}</td></tr>" for k, v in metrics.items()
            if not isinstance(v, list | dict)) + "</table>"
    return f"<p>{_e(metrics)}</p>"
