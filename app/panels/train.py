"""Train page: train a model on the loaded dataset with the mapped roles; live loss curve."""

from __future__ import annotations

import re

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..messages import TrainRequest
from ..plots.loss import LossPlot
from ..richtext import esc, plain

#: Ensemble members of a new model (the engine's default for shipped models).
DEFAULT_MEMBERS = 5
PRESETS = {
    "Quick look (a few minutes on a laptop)": dict(ae_max_steps=1000, flow_steps=600),
    "Standard": {},
    "Thorough (slower, usually a little better)": dict(ae_max_steps=20000, flow_steps=10000),
}


class TrainPanel(QWidget):
    train_requested = Signal(object)  # app.messages.TrainRequest

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.adata = self.schema = None
        self.schema_ok = False
        self.busy = False
        self.status = QLabel()  # rich text; column names in it are escaped
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self.name = QLineEdit()
        self.name.setPlaceholderText("my-model")
        self.name.setToolTip("Name of the new model (letters, digits, - and _)")
        self.name.textChanged.connect(self._validate)
        self.name_msg = plain(QLabel())
        self.name_msg.setStyleSheet("color:#b00020")
        self.backbone = QComboBox()
        import engine

        summaries = engine.BACKBONE_SUMMARIES
        for name in engine.BACKBONE_NAMES:          # the engine's backbone registry
            self.backbone.addItem(name, name)
            self.backbone.setItemData(self.backbone.count() - 1, summaries.get(name, ""),
                                      Qt.ItemDataRole.ToolTipRole)
        self.backbone.setToolTip("Network inside the model: 'mlp' is fast; the others are "
                                 "larger and slower (hover over each for what it is)")
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setCurrentIndex(1)
        self.preset.setToolTip("How long to train")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Random seed for training")
        self.members = QSpinBox()
        self.members.setRange(1, 10)
        self.members.setValue(DEFAULT_MEMBERS)
        self.members.setToolTip("Independently trained networks in the model. Their spread is "
                                "the uncertainty shown beside every predicted effect (a 90% "
                                "interval). 1 trains fastest but gives no uncertainty estimate; "
                                "each member adds the time of one network's training.")
        self.members.valueChanged.connect(self._members_changed)
        self.members_note = plain(QLabel())
        self.members_note.setStyleSheet("color:#555")
        self.members_note.setWordWrap(True)
        self.anchor = QCheckBox("Start new cell types from the measured effect")
        self.anchor.setChecked(True)                  # the engine's default (train --anchor)
        self.anchor.setToolTip(
            "For a cell type never seen with a perturbation, draw its cells from the type's own "
            "control cells plus the perturbation's effect measured in the most similar other "
            "cell types (in the model's latent space), then let the network refine them. On "
            "Kang's leave-one-cell-type-out folds this kept every cell type above the "
            "mean-shift baseline, where the network alone fell below it on two; on CRISPR "
            "genes held out in one cell line it beat the network alone on all three. Untick "
            "to leave every condition to the network. Measured conditions are not affected.")
        self.train_btn = QPushButton("Train model")
        self.train_btn.setToolTip("Start training in the background (Ctrl+T)")
        self.train_btn.setMinimumHeight(36)
        self.train_btn.setStyleSheet("QPushButton { font-weight: bold; }")
        self.train_btn.clicked.connect(self._train)
        self.phase = plain(QLabel("Loss curves appear here while training runs."))
        self.loss = LossPlot()
        self.loss.setToolTip("Training loss (log scale): it should fall and level off")
        self.loss.setMinimumHeight(260)

        box = QGroupBox("New model")
        f = QFormLayout(box)
        nm = QWidget()
        v = QVBoxLayout(nm)
        v.setContentsMargins(0, 0, 0, 0)
        v.addWidget(self.name)
        v.addWidget(self.name_msg)
        f.addRow("Name", nm)
        f.addRow("Network", self.backbone)
        f.addRow("Training length", self.preset)
        f.addRow("Seed", self.seed)
        f.addRow("Ensemble members", self.members)
        f.addRow(self.members_note)
        f.addRow("Unseen cell types", self.anchor)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("<h2>Train a model</h2>"))
        lay.addWidget(self.status)
        row = QHBoxLayout()
        row.addWidget(box, 1)
        row.addStretch(1)
        lay.addLayout(row)
        b = QHBoxLayout()
        b.addWidget(self.phase, 1)
        b.addWidget(self.train_btn)
        lay.addLayout(b)
        lay.addWidget(self.loss, 1)
        self.set_context(None, None, False)
        self._members_changed(self.members.value())

    def _members_changed(self, k: int) -> None:
        self.members_note.setText(
            "A single member: effects come without an uncertainty estimate." if k == 1 else
            f"{k} members: each effect gets a 90% interval; the flow network is trained {k} "
            "times.")

    def set_context(self, adata, schema, schema_ok: bool, path: str | None = None) -> None:
        self.adata, self.schema, self.schema_ok = adata, schema, schema_ok
        if adata is None:
            self.status.setText("Open a dataset on the <b>Data</b> page and map its columns; "
                                "then train a model of it here. The new model appears in the "
                                "model list with its card.")
        elif not schema_ok:
            self.status.setText("<span style='color:#b00020'>The column mapping on the "
                                "<b>Data</b> page has errors; fix them first.</span>")
        else:
            roles = ", ".join(f"{k.replace('_key', '').replace('_', ' ')} = {v}"
                              for k, v in schema.roles().items())
            self.status.setText(f"Training on {adata.n_obs:,} cells × {adata.n_vars:,} genes "
                                f"with {esc(roles) if roles else 'no condition columns'}.")
            # the name follows the dataset unless the user typed one
            auto = getattr(self, "_auto_name", None)
            if path and (not self.name.text() or self.name.text() == auto):
                stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.rsplit("/", 1)[-1].split(".")[0])
                self._auto_name = stem.strip("-")[:40] or "my-model"
                self.name.setText(self._auto_name)
        self._validate()

    def _validate(self, *_a) -> bool:
        name = self.name.text().strip()
        msg = ""
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            msg = "Use letters, digits, '-', '_' or '.' (no spaces)."
        self.name_msg.setText(msg)
        self.name_msg.setVisible(bool(msg))
        ok = self.adata is not None and self.schema_ok and bool(name) and not msg
        self.train_btn.setEnabled(ok and not self.busy)
        return ok

    def request(self) -> TrainRequest | None:
        if not self._validate():
            return None
        return TrainRequest(name=self.name.text().strip(), backbone=self.backbone.currentData(),
                            seed=self.seed.value(),
                            overrides={**PRESETS[self.preset.currentText()],
                                       "members": self.members.value(),
                                       "anchor": self.anchor.isChecked()})

    def _train(self) -> None:
        req = self.request()
        if req is not None:
            self.loss.reset()
            self.train_requested.emit(req)

    def on_progress(self, p) -> None:
        if p.phase == "autoencoder":
            self._ae_total = p.total
        if p.loss is not None:
            # one continuous x axis: the flow phase starts where the autoencoder stopped
            step = p.done + (0 if p.phase == "autoencoder" else getattr(self, "_ae_total", 0))
            self.loss.add_point(p.phase, step, p.loss)
        eta = f", about {int(p.eta_s)} s left" if p.eta_s else ""
        loss = f", loss {p.loss:.4g}" if p.loss is not None else ""
        self.phase.setText(f"Training {p.phase}: step {p.done:,} of {p.total:,}{loss}{eta}")
