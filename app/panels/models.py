"""Models page: shipped and user models with their cards; import a model folder."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
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


class ModelsPanel(QWidget):
    model_chosen = Signal(object)  # ModelInfo
    import_requested = Signal()
    refresh_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.infos: list = []
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
        self.active = QLabel("No model in use.")
        self.active.setWordWrap(True)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("<h2>Models</h2>"))
        ll.addWidget(self.list, 1)
        b = QHBoxLayout()
        b.addWidget(self.import_btn)
        b.addWidget(self.refresh_btn)
        ll.addLayout(b)
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

    def set_models(self, infos: list, *, select: str | None = None) -> None:
        current = select or (self.current().name if self.current() else None)
        self.infos = list(infos)
        self.list.clear()
        row_to_select = 0
        for i, info in enumerate(self.infos):
            badge = "shipped" if info.source == "shipped" else "yours"
            item = QListWidgetItem(f"{info.name}\n   {badge} · {info.n_genes:,} genes")
            item.setData(Qt.ItemDataRole.UserRole, info.name)
            item.setToolTip(str(info.path))
            self.list.addItem(item)
            if info.name == current:
                row_to_select = i
        if self.infos:
            self.list.setCurrentRow(row_to_select)
        else:
            self.card.setHtml("<p>No models found. Import a model folder or train one on the "
                              "<b>Train</b> page.</p>")
        self.use_btn.setEnabled(bool(self.infos))

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

    def _show_card(self, _row: int) -> None:
        info = self.current()
        if info is not None:
            self.card.setHtml(card_html(info))

    def set_active(self, text: str) -> None:
        self.active.setText(text)

    def set_device(self, text: str) -> None:
        self.device.setText(text)


def _e(x) -> str:
    return html.escape(str(x))


def _list(values, limit: int = 12) -> str:
    values = list(values)
    s = ", ".join(_e(v) for v in values[:limit])
    return s + (f", … ({len(values)} in all)" if len(values) > limit else "") if values else "—"


def card_html(info) -> str:
    """A model card a biologist can read: what it conditions on, data, metrics, licence."""
    card, space = dict(info.card or {}), info.space
    title = card.get("title") or info.name
    out = [f"<h2>{_e(title)}</h2>"]
    if card.get("description"):
        out.append(f"<p>{_e(card['description'])}</p>")
    out.append(f"<p><i>{'Shipped with the app' if info.source == 'shipped' else 'Your model'}"
               f"</i> · {info.n_genes:,} genes"
               + (f" · backbone {_e(info.backbone)}" if info.backbone else "") + "</p>")
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
        for v in card["verdicts"]:
            colour = ("#a15c00" if "NOT" in str(v) else
                      "#555" if "not a baseline" in str(v) else "#1b5e20")
            out.append(f"<li style='color:{colour}'>{_e(v)}</li>")
        out.append("</ul>")
    tr = card.get("training")
    if isinstance(tr, dict):
        names = {"data_file": "Data file", "n_cells": "Cells", "n_genes": "Genes",
                 "n_conditions": "Conditions", "seed": "Seed", "device": "Trained on",
                 "seconds": "Training time (s)", "flow_steps": "Flow steps",
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


def _metrics_html(metrics) -> str:
    """Metrics as a table: list of row dicts, dict of dicts, or a flat dict."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else _e(v)

    if isinstance(metrics, list) and metrics and isinstance(metrics[0], dict):
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
