"""Condition composer: build conditions from the chosen model's vocabulary, queue several, and
ask for one experiment (the matching controls are always generated alongside)."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QBoxLayout,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from ..effect_table import evidence_of, score_text
from ..messages import GenerateRequest
from ..richtext import card_value, esc, plain, tip, wrap_tip
from .perturbations import PerturbationEditor

NOT_SET = "(not specified)"
WARN = "#a15c00"
#: Item data role of a queued condition's engine.effects.Evidence (None when unknown).
EVIDENCE_ROLE = Qt.ItemDataRole.UserRole + 1

#: the guidance spin box's lowest value, shown as "model's choice" (guidance=None)
AUTO_GUIDANCE = -0.5


class ComposerPanel(QWidget):
    generate_requested = Signal(object)  # app.messages.GenerateRequest

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.space = None
        self.model = None
        self.model_name = ""
        self.busy = False
        self.title = QLabel("<h2>Compose an experiment</h2>")
        self.subtitle = QLabel("Choose a model on the Models page first.")
        self.subtitle.setWordWrap(True)
        self.subtitle.setTextFormat(Qt.TextFormat.RichText)  # the model name in it is escaped

        # -- the condition ------------------------------------------------------------------
        cond_box = QGroupBox("Condition")
        self.cond_form = QFormLayout(cond_box)
        self.cond_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.cell_type = QComboBox()
        self.cell_type.setToolTip("Cell type (or cell line) to generate; only those the model "
                                  "was trained on")
        self.cond_form.addRow("Cell type", self.cell_type)
        self.context_combos: dict[str, QComboBox] = {}
        self.perts = PerturbationEditor()
        self.cond_form.addRow("Perturbations", self.perts)
        self.check = QLabel()
        self.check.setWordWrap(True)
        self.check.setTextFormat(Qt.TextFormat.RichText)
        self.cond_form.addRow(self.check)

        # -- sampling settings ----------------------------------------------------------------
        run_box = QGroupBox("Sampling")
        run_form = QFormLayout(run_box)
        self.n_cells = QSpinBox()
        self.n_cells.setRange(1, 200_000)
        self.n_cells.setValue(1000)
        self.n_cells.setSingleStep(100)
        self.n_cells.setGroupSeparatorShown(True)
        self.n_cells.setToolTip("Cells to generate for each condition (and for its control)")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Random seed: the same seed gives the same cells")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setToolTip("Sampling steps: more is slower and slightly more accurate")
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(AUTO_GUIDANCE, 20.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(2)
        # the lowest value reads "model's choice": the guidance the model chose for each kind
        # of condition (measured, new cell type, ...) on held-out folds
        self.guidance.setSpecialValueText("model's choice")
        self.guidance.setToolTip("How strongly cells follow the condition (1 = as trained; "
                                 "higher exaggerates the effect). \"model's choice\" uses the "
                                 "value the model's builders chose for each kind of condition "
                                 "on held-out cells (shown on the model card)")
        run_form.addRow("Cells per condition", self.n_cells)
        run_form.addRow("Seed", self.seed)
        run_form.addRow("Sampling steps", self.steps)
        run_form.addRow("Guidance", self.guidance)

        # -- experiment queue ----------------------------------------------------------------
        q_box = QGroupBox("Experiment (conditions generated together, each with its control)")
        q_lay = QVBoxLayout(q_box)
        self.queue = QListWidget()
        self.queue.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.queue.setToolTip("Conditions to generate in one run. Empty: the condition above.")
        self.queue.setMinimumHeight(90)
        self.add_btn = QPushButton("Add condition to experiment")
        self.add_btn.setToolTip("Queue the condition above (Ctrl+D)")
        self.add_btn.setShortcut(QKeySequence("Ctrl+D"))
        self.singles_btn = QPushButton("All single perturbations")
        self.singles_btn.setToolTip("Queue every single perturbation measured in the chosen "
                                    "cell type (all targets if none was measured there)")
        self.dose_btn = QPushButton("Dose series")
        self.dose_btn.setToolTip("Queue the condition above at 6 doses spread over the "
                                 "trained range")
        self.remove_btn = QPushButton("Remove")
        self.remove_btn.setToolTip("Remove the selected conditions (Delete)")
        self.remove_btn.setShortcut(QKeySequence.StandardKey.Delete)
        self.clear_btn = QPushButton("Clear")
        self.clear_btn.setToolTip("Empty the experiment")
        row = QHBoxLayout()
        for b in (self.add_btn, self.singles_btn, self.dose_btn, self.remove_btn, self.clear_btn):
            row.addWidget(b)
        row.addStretch(1)
        q_lay.addLayout(row)
        q_lay.addWidget(self.queue)

        self.generate_btn = QPushButton("Generate")
        self.generate_btn.setToolTip("Generate the experiment (Ctrl+Return)")
        self.generate_btn.setShortcut(QKeySequence("Ctrl+Return"))
        self.generate_btn.setMinimumHeight(36)
        self.generate_btn.setStyleSheet("QPushButton { font-weight: bold; }")
        self.summary = plain(QLabel())
        self.summary.setStyleSheet("color: #444;")
        gen_row = QHBoxLayout()
        gen_row.addWidget(self.summary, 1)
        gen_row.addWidget(self.generate_btn)

        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.addWidget(self.title)
        lay.addWidget(self.subtitle)
        # narrow (e.g. 1280 px): condition and sampling side by side above the queue; wide
        # (1920 px): condition and sampling stacked on the left, the queue on the right
        self._top = top = QBoxLayout(QBoxLayout.Direction.LeftToRight)
        top.addWidget(cond_box, 3)
        top.addWidget(run_box, 1, Qt.AlignmentFlag.AlignTop)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addLayout(top)
        ll.addStretch(0)
        self._body = body = QBoxLayout(QBoxLayout.Direction.TopToBottom)
        body.addWidget(left, 0)
        body.addWidget(q_box, 1)
        lay.addLayout(body, 1)
        lay.addLayout(gen_row)
        self._wide = False
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.cell_type.currentIndexChanged.connect(self._validate)
        self.perts.changed.connect(self._validate)
        self.n_cells.valueChanged.connect(self._update_summary)
        self.guidance.valueChanged.connect(self._validate)   # the evidence line names the scale
        self.queue.model().rowsInserted.connect(self._update_summary)
        self.queue.model().rowsRemoved.connect(self._update_summary)
        self.add_btn.clicked.connect(self.add_current)
        self.singles_btn.clicked.connect(self.add_all_singles)
        self.dose_btn.clicked.connect(self.add_dose_series)
        self.remove_btn.clicked.connect(self._remove_selected)
        self.clear_btn.clicked.connect(self.queue.clear)
        self.generate_btn.clicked.connect(self._generate)
        self.set_model(None)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        wide = self.width() >= WIDE_PX
        if wide != self._wide:
            self._wide = wide
            D = QBoxLayout.Direction  # noqa: N806
            self._body.setDirection(D.LeftToRight if wide else D.TopToBottom)
            self._top.setDirection(D.TopToBottom if wide else D.LeftToRight)
            self._body.setStretch(0, 1 if wide else 0)
            self._body.setStretch(1, 1)

    # -- model -------------------------------------------------------------------------------
    def set_model(self, model) -> None:
        """``model``: a loaded PerturbModel (or anything with name, space, default_steps, ...)."""
        self.queue.clear()
        for w in self.context_combos.values():
            self.cond_form.removeRow(w)  # deletes the combo and its label
        self.context_combos = {}
        self.cell_type.clear()
        self.model = model
        if model is None:
            self.space = None
            self.model_name = ""
            self.subtitle.setText("Choose a model on the <b>Models</b> page first.")
            self.perts.set_space(None)
            self.setEnabled(True)
            self._set_enabled(False)
            return
        space = model.space
        self.space, self.model_name = space, model.name
        self._set_enabled(True)
        self.subtitle.setText(f"Model <b>{esc(model.name)}</b>: choose what to generate. Everything "
                              "offered here was in the model's training data; anything else is "
                              "flagged before it runs.")
        if space.cell_types:
            self.cell_type.addItems(list(space.cell_types))
            self.cell_type.setEnabled(True)
        else:
            self.cell_type.addItem("(this model has no cell-type condition)")
            self.cell_type.setEnabled(False)
        for level in space.context_levels:
            combo = QComboBox()
            combo.addItem(NOT_SET)
            combo.addItems(list(space.context_values.get(level, [])))
            combo.setToolTip(tip(f"{level.capitalize()} of the cells (context level)"))
            combo.currentIndexChanged.connect(self._validate)
            self.context_combos[level] = combo
            self.cond_form.insertRow(len(self.context_combos), plain(QLabel(level.capitalize())),
                                     combo)
            vals = space.context_values.get(level, [])
            if len(vals) == 1:
                combo.setCurrentIndex(1)
        unit = str(card_value(model, "dose_unit"))
        fn = getattr(model, "new_gene_candidates", None)
        self.perts.set_space(space, unit=unit, new_genes=fn() if callable(fn) else None)
        self.steps.setValue(int(getattr(model, "default_steps", 20) or 20))
        if getattr(model, "guidance_by_evidence", None) or getattr(model, "anchor_rule", None):
            self.guidance.setValue(AUTO_GUIDANCE)
        else:
            self.guidance.setValue(float(getattr(model, "default_guidance", 1.0) or 1.0))
        self.singles_btn.setEnabled(bool(space.targets))
        self.dose_btn.setEnabled(bool(space.has_dose))
        self._validate()

    def _set_enabled(self, on: bool) -> None:
        for w in (self.cell_type, self.perts, self.n_cells, self.seed, self.steps, self.guidance,
                  self.add_btn, self.singles_btn, self.dose_btn, self.remove_btn, self.clear_btn,
                  self.generate_btn, self.queue):
            w.setEnabled(on)

    # -- building conditions --------------------------------------------------------------------
    def current_condition(self):
        from engine.conditions.spec import Condition

        ct = self.cell_type.currentText() if self.space and self.space.cell_types else None
        ctx = {k: c.currentText() for k, c in self.context_combos.items()
               if c.currentText() != NOT_SET}
        cond = Condition.make(ct, self.perts.perturbations(), ctx)
        return self.space.complete(cond) if self.space is not None else cond

    def _problem(self, cond) -> str | None:
        from engine.errors import ConditionError

        try:
            self.space.validate(cond)
        except ConditionError as e:
            return str(e)
        return None

    def _validate(self, *_args) -> bool:
        if self.space is None:
            self.check.setText("<span style='color:#a15c00'>No model chosen yet: choose one on "
                               "the Models page (Ctrl+2). The cell types and perturbations "
                               "offered here come from the model.</span>")
            self.generate_btn.setEnabled(False)
            return False
        rows_ok = self.perts.check_rows()
        cond = self.current_condition()
        problem = self._problem(cond) if rows_ok else "Fix the flagged perturbation first."
        if problem:
            self.check.setText(f"<span style='color:#b00020'>✖ {esc(problem)}</span>")
        elif cond.is_control:
            self.check.setText("<span style='color:#1b5e20'>✔ Control cells (no perturbation)."
                               "</span>")
        elif self.space.new_targets(cond):
            names = ", ".join(self.space.new_targets(cond))
            self.check.setText(f"<span style='color:{WARN}'>⚠ {esc(cond.label)}: {esc(names)} "
                               "never perturbed in training: predicted from gene-set priors. "
                               "The results show the baseline's prediction beside the "
                               "model's.</span>" + self._evidence_line(cond))
        elif self.space.is_seen(cond):
            self.check.setText(f"<span style='color:#1b5e20'>✔ {esc(cond.label)}: measured in the "
                               "training data.</span>" + self._evidence_line(cond))
        else:
            how = ("the model predicts it from the measured effect elsewhere (below)"
                   if self._anchor(cond) is not None else
                   "the model predicts it by combining what it learned")
            self.check.setText(f"<span style='color:#a15c00'>⚠ {esc(cond.label)}: never measured in "
                               f"the training data; {how} (an extrapolation).</span>"
                               + self._evidence_line(cond))
        ok = problem is None
        self.add_btn.setEnabled(ok)
        self.generate_btn.setEnabled((ok or self.queue.count() > 0) and not self.busy)
        self._update_summary()
        return ok

    def add_condition(self, cond) -> bool:
        if self._problem(cond):
            return False
        for i in range(self.queue.count()):
            if self.queue.item(i).data(Qt.ItemDataRole.UserRole) == cond:
                return False
        item = QListWidgetItem(cond.label)
        item.setData(Qt.ItemDataRole.UserRole, cond)
        ev = evidence_of(self.model, cond) if self.model is not None else None
        item.setData(EVIDENCE_ROLE, ev)
        if ev is not None:
            score = score_text(ev)
            item.setText(f"{cond.label}   —   {ev.label}" + (f" · {score}" if score else ""))
            item.setToolTip(wrap_tip(ev.verdict))
            if ev.below_baseline:
                item.setIcon(self.style().standardIcon(
                    QStyle.StandardPixmap.SP_MessageBoxWarning))
                item.setForeground(QColor(WARN))
                item.setToolTip(wrap_tip("On held-out tests of this kind the simple baseline did "
                                    "better than the model.\n" + ev.verdict))
        elif not cond.is_control and not self.space.is_seen(cond):
            item.setToolTip("Never measured in training data (extrapolation)")
            item.setText(cond.label + "   (extrapolation)")
        self.queue.addItem(item)
        self.generate_btn.setEnabled(not self.busy)
        return True

    def _anchor(self, cond):
        """The latent baseline ``cond`` would start from (engine.anchor), or None."""
        from engine.errors import ConditionError

        fn = getattr(self.model, "anchor_for", None)
        try:
            return fn(cond) if callable(fn) else None
        except ConditionError:            # an invalid condition: the form says why elsewhere
            return None

    def _evidence_line(self, cond) -> str:
        """The evidence class of ``cond`` and the card's held-out score for it (rich text)."""
        ev = evidence_of(self.model, cond) if self.model is not None else None
        if ev is None:
            return ""
        score = score_text(ev)
        text = f"Evidence: {esc(ev.label)}" + (f" · {esc(score)}" if score else "")
        g = (getattr(self.model, "guidance_by_evidence", None) or {}).get(ev.kind)
        anchor = self._anchor(cond)
        if anchor is not None:                    # engine.anchor: the model's choice for this kind
            n = len(anchor[1])
            where = (f"{n} other cell type{'s' if n > 1 else ''}"
                     if all(c.cell_type != cond.cell_type for c in anchor[1]) else
                     f"{n} measured group{'s' if n > 1 else ''}")
            rule = getattr(self.model, "anchor_rule", None)
            refined = (", then refined by the model" if rule is not None and rule.refine > 0
                       else ", used as they are (not refined by the model)")
            text += (f" · starts from the {esc(cond.cell_type or '')} control cells plus the "
                     f"effect measured in {where}{refined}")
        elif g is not None and self.guidance.value() < 0:      # "model's choice"
            text += f" · drawn at guidance {g:g}, the model's choice for this kind"
        if ev.below_baseline:
            on = getattr(ev, "below_on", ())
            return (f"<br><span style='color:{WARN}'>⚠ {text}: the simple baseline did better on "
                    "such conditions" + (f" ({esc('; '.join(on))})" if on else "")
                    + ".</span>")
        return f"<br><span style='color:#444'>{text}</span>"

    def _confirm_long(self, cells: int) -> bool:
        """Ask before a run expected to take more than :data:`ASK_ABOVE_S` seconds."""
        est = self.estimate_seconds(cells)
        if est is None or est <= ASK_ABOVE_S:
            return True
        from PySide6.QtWidgets import QMessageBox

        ans = QMessageBox.question(
            self, "A long run", f"Generating {cells:,} cells should take about "
            f"{duration_text(est)} on this computer (measured on your last run). You can "
            "cancel it at any time (Esc). Generate?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return ans == QMessageBox.StandardButton.Yes

    def add_current(self) -> None:
        if self._validate():
            self.add_condition(self.current_condition())

    def add_all_singles(self) -> None:
        from engine.conditions.spec import Condition, Perturbation

        if self.space is None:
            return
        base = self.current_condition()
        singles = []
        for t in self.space.targets:
            types = self.space.target_types.get(t) or [None]
            for ty in types:
                singles.append(self.space.complete(Condition.make(
                    base.cell_type, [Perturbation(t, ty)], base.context_dict())))
        # the singles measured in this cell type; all of them if none was measured here
        seen = [c for c in singles if self.space.is_seen(c)]
        for cond in seen or singles:
            self.add_condition(cond)

    def add_dose_series(self) -> None:
        from engine.conditions.spec import Condition, Perturbation

        if self.space is None or not self.space.has_dose:
            return
        base = self.current_condition()
        if not base.perturbations:
            self.check.setText("<span style='color:#b00020'>✖ Choose a drug first, then add a "
                               "dose series.</span>")
            return
        lo, hi = self.space.dose_range or (0.01, 10.0)
        lo = lo if lo > 0 else hi / 1000
        for k in range(6):
            d = 10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * k / 5)
            perts = [Perturbation(p.target, p.type, float(f"{d:.4g}")) for p in base.perturbations]
            self.add_condition(Condition.make(base.cell_type, perts, base.context_dict()))

    def _remove_selected(self) -> None:
        for item in self.queue.selectedItems():
            self.queue.takeItem(self.queue.row(item))

    def conditions(self) -> list:
        if self.queue.count():
            return [self.queue.item(i).data(Qt.ItemDataRole.UserRole)
                    for i in range(self.queue.count())]
        return [self.current_condition()] if self._validate() else []

    def _update_summary(self, *_a) -> None:
        if self.space is None:
            self.summary.setText("")
            return
        conds = self.conditions_preview()
        n_ctrl = len({c.control() for c in conds} - set(conds))
        total = (len(conds) + n_ctrl) * self.n_cells.value()
        est = self.estimate_seconds(total)
        self.summary.setText(f"{len(conds)} condition(s) + {n_ctrl} matching control(s) = "
                             f"{total:,} cells" + (f", about {duration_text(est)} here"
                                                   if est is not None else ""))

    def conditions_preview(self) -> list:
        if self.queue.count():
            return [self.queue.item(i).data(Qt.ItemDataRole.UserRole)
                    for i in range(self.queue.count())]
        cond = self.current_condition()
        return [cond] if self._problem(cond) is None else []

    def request(self) -> GenerateRequest | None:
        conds = self.conditions()
        if not conds:
            return None
        return GenerateRequest(conditions=tuple(conds), n=self.n_cells.value(),
                               seed=self.seed.value(), steps=self.steps.value(),
                               guidance=None if self.guidance.value() < 0 else
                               self.guidance.value())

    def estimate_seconds(self, cells: int) -> float | None:
        """How long generating ``cells`` cells should take on this computer, from the speed of
        the last run (cells per second at its number of steps, remembered between sessions);
        None before any run."""
        from .. import settings as cfg

        raw = str(cfg.get("generation_rate") or "")
        try:
            rate, steps = (float(x) for x in raw.split(","))
        except ValueError:
            return None
        if rate <= 0 or steps <= 0:
            return None
        return cells / rate * (self.steps.value() / steps) + 2.0

    def _generate(self) -> None:
        if self.space is None:           # Ctrl+G with no model: the controller says why
            self.generate_requested.emit(None)
            return
        req = self.request()
        if req is not None and not self._confirm_long(req.n_total):
            return
        if req is not None:
            self.generate_requested.emit(req)


#: From this width on, the queue sits beside the condition instead of under it.
WIDE_PX = 1500

#: Generate asks first when a run is expected to take longer than this (seconds).
ASK_ABOVE_S = 180.0


def duration_text(seconds: float) -> str:
    """5 s, 40 s, 3 min, 1 h 20 min."""
    s = max(float(seconds), 1.0)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
