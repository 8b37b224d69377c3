"""Perturb my cells: take the loaded dataset's control cells as the starting point and generate
their perturbed counterparts (the engine's second mode)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..messages import PerturbRequest
from ..richtext import card_value, esc
from .perturbations import PerturbationEditor


class PerturbPanel(QWidget):
    perturb_requested = Signal(object)  # app.messages.PerturbRequest

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.adata = self.schema = self.model = None
        self.busy = False
        # rich text: every name from the dataset or the model in these is escaped
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self.mapping = QLabel()
        self.mapping.setWordWrap(True)
        self.mapping.setTextFormat(Qt.TextFormat.RichText)
        self.mapping.setToolTip("Genes are matched by symbol; model genes missing from your "
                                "data are treated as not expressed")
        self.cell_type = QComboBox()
        self.cell_type.setToolTip("Which of your control cells to start from")
        self.n_cells = QSpinBox()
        self.n_cells.setRange(1, 200_000)
        self.n_cells.setValue(2000)
        self.n_cells.setGroupSeparatorShown(True)
        self.n_cells.setToolTip("At most this many control cells are used (a random subset)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Random seed: the same seed gives the same result")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setToolTip("Sampling steps (each way)")
        self.perts = PerturbationEditor()
        self.perts.changed.connect(self._validate)
        self.cell_type.currentIndexChanged.connect(self._validate)
        self.n_cells.valueChanged.connect(self._validate)
        self.check = QLabel()
        self.check.setWordWrap(True)
        self.check.setTextFormat(Qt.TextFormat.RichText)
        self.run_btn = QPushButton("Perturb my cells")
        self.run_btn.setToolTip("Generate the perturbed counterpart of every chosen control cell")
        self.run_btn.setMinimumHeight(36)
        self.run_btn.setStyleSheet("QPushButton { font-weight: bold; }")
        self.run_btn.clicked.connect(self._run)

        src = QGroupBox("Starting cells (from your dataset)")
        f = QFormLayout(src)
        f.addRow("Cell type", self.cell_type)
        f.addRow("Use at most", self.n_cells)
        f.addRow("Gene mapping", self.mapping)
        tgt = QGroupBox("Perturbation to apply")
        t = QVBoxLayout(tgt)
        t.addWidget(self.perts)
        g = QFormLayout()
        g.addRow("Seed", self.seed)
        g.addRow("Sampling steps", self.steps)
        t.addLayout(g)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("<h2>Perturb my cells</h2>"))
        intro = QLabel("Start from the <b>control cells of your own dataset</b> and ask the model "
                       "what each of them would look like after the perturbation. Each output "
                       "cell keeps the name of the cell it came from.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        row.addWidget(src, 1)
        row.addWidget(tgt, 1)
        lay.addLayout(row)
        lay.addWidget(self.check)
        b = QHBoxLayout()
        b.addStretch(1)
        b.addWidget(self.run_btn)
        lay.addLayout(b)
        lay.addStretch(1)
        self.refresh()

    def set_context(self, adata=None, schema=None, model=None) -> None:
        changed_model = model is not self.model
        self.adata, self.schema, self.model = adata, schema, model
        if changed_model:
            self.perts.set_space(model.space if model is not None else None,
                                 unit=str(card_value(model, "dose_unit")))
            if model is not None:
                self.steps.setValue(int(getattr(model, "default_steps", 20) or 20))
        self.refresh()

    def _control_mask(self):
        import numpy as np

        obs = self.adata.obs
        key = self.schema.perturbation_key if self.schema is not None else None
        if key is None or key not in obs:
            return np.ones(self.adata.n_obs, dtype=bool)
        vals = obs[key].astype(str)
        return np.asarray([self.schema.is_control_value(v) or v == self.schema.control_label
                           for v in vals], dtype=bool)

    def refresh(self) -> None:
        self.cell_type.blockSignals(True)
        self.cell_type.clear()
        missing = []
        if self.adata is None:
            missing.append("open a dataset on the <b>Data</b> page")
        if self.model is None:
            missing.append("choose a model on the <b>Models</b> page")
        if missing:
            self.status.setText("To start, " + " and ".join(missing) + ".")
            self.mapping.setText("—")
            self.cell_type.blockSignals(False)
            self._set_enabled(False)
            return
        self._set_enabled(True)
        mask = self._control_mask()
        self.ctrl_mask = mask
        ct_key = self.schema.cell_type_key if self.schema is not None else None
        model_types = list(self.model.space.cell_types)
        if ct_key and ct_key in self.adata.obs:
            cts = self.adata.obs[ct_key].astype(str).to_numpy()[mask]
            import collections

            counts = collections.Counter(cts)
            for ct, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                known = not model_types or ct in model_types
                self.cell_type.addItem(f"{ct}  ({n:,} control cells)"
                                       + ("" if known else "  — unknown to the model"), ct)
        elif model_types:
            for ct in model_types:
                self.cell_type.addItem(f"{ct}  (all {int(mask.sum()):,} control cells)", ct)
        else:
            self.cell_type.addItem(f"all cells ({int(mask.sum()):,} control cells)", None)
        self.cell_type.blockSignals(False)
        try:
            gm = self.model.gene_mapping(self.adata)
            colour = "#1b5e20" if gm.fraction_found >= 0.9 else (
                "#a15c00" if gm.fraction_found >= 0.5 else "#b00020")
            extra = (f"<br>missing e.g. {esc(', '.join(map(str, gm.missing[:8])))}"
                     if gm.missing else "")
            self.mapping.setText(f"<span style='color:{colour}'>{len(gm.found):,} of "
                                 f"{gm.n_model:,} model genes found; <b>{len(gm.missing):,} "
                                 f"missing</b>; {gm.n_extra:,} of your genes not used by the "
                                 f"model</span>{extra}")
        except Exception as e:  # noqa: BLE001
            self.mapping.setText(f"<span style='color:#b00020'>{esc(e)}</span>")
        label = self.schema.control_label if self.schema else "control"
        self.status.setText(f"Dataset: {int(mask.sum()):,} control cells of "
                            f"{self.adata.n_obs:,} (control label '{esc(label)}'). "
                            f"Model: <b>{esc(self.model.name)}</b>.")
        self._validate()

    def _set_enabled(self, on: bool) -> None:
        for w in (self.cell_type, self.n_cells, self.seed, self.steps, self.perts, self.run_btn):
            w.setEnabled(on)

    def condition(self):
        from engine.conditions.spec import Condition

        ct = self.cell_type.currentData(Qt.ItemDataRole.UserRole)
        if not self.model.space.cell_types:
            ct = None
        cond = Condition.make(ct, self.perts.perturbations())
        return self.model.space.complete(cond)

    def _validate(self, *_a) -> bool:
        if self.model is None or self.adata is None:
            return False
        from engine.errors import ConditionError

        ok = self.perts.check_rows()
        problem = None if ok else "Fix the flagged perturbation first."
        cond = self.condition()
        if ok:
            try:
                self.model.space.validate(cond)
            except ConditionError as e:
                problem = str(e)
        if problem is None and cond.is_control:
            problem = "Choose a perturbation to apply."
        if problem is None and self._selected_mask().sum() == 0:
            problem = "There are no control cells of this cell type in the dataset."
        n = 0 if problem else int(min(self._selected_mask().sum(), self.n_cells.value()))
        self.check.setText(f"<span style='color:#b00020'>✖ {esc(problem)}</span>" if problem else
                           f"<span style='color:#1b5e20'>✔ {n:,} cells will be perturbed with "
                           f"{esc(cond.label)}.</span>")
        self.run_btn.setEnabled(problem is None and not self.busy)
        return problem is None

    def _selected_mask(self):
        mask = self.ctrl_mask.copy()
        ct = self.cell_type.currentData(Qt.ItemDataRole.UserRole)
        ct_key = self.schema.cell_type_key if self.schema is not None else None
        if ct is not None and ct_key and ct_key in self.adata.obs:
            mask &= self.adata.obs[ct_key].astype(str).to_numpy() == ct
        return mask

    def request(self) -> PerturbRequest | None:
        if not self._validate():
            return None
        import numpy as np

        idx = np.flatnonzero(self._selected_mask())
        n = self.n_cells.value()
        if idx.size > n:
            rng = np.random.default_rng(self.seed.value())
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        return PerturbRequest(cell_index=idx, condition=self.condition(), seed=self.seed.value(),
                              steps=self.steps.value())

    def _run(self) -> None:
        req = self.request()
        if req is not None:
            self.perturb_requested.emit(req)
