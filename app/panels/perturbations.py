"""Editors for the perturbations of a condition: one row per gene or drug, built from a model's
vocabulary (targets with autocomplete, the types each target was seen with, dose on a log slider).
"""

from __future__ import annotations

import math

from PySide6.QtCore import QSignalBlocker, QStringListModel, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..richtext import plain, tip

TYPE_HELP = {
    "knockout": "gene knocked out (CRISPR-Cas9 cut)",
    "ko": "gene knocked out (CRISPR-Cas9 cut)",
    "crispra": "gene switched on / up (CRISPR activation)",
    "crispri": "gene switched down (CRISPR interference)",
    "drug": "small molecule at a dose",
}

_SLIDER_STEPS = 1000


class DoseEditor(QWidget):
    """Dose on a log-scale slider plus an exact spin box, kept in sync."""

    changed = Signal(float)

    def __init__(self, lo: float, hi: float, unit: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lo = lo if lo and lo > 0 else min(hi, 1.0) / 1000 if hi and hi > 0 else 0.001
        hi = hi if hi and hi > lo else lo * 1000
        self.lo, self.hi = lo, hi
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, _SLIDER_STEPS)
        self.slider.setToolTip(tip(f"Dose on a log scale from {lo:g} to {hi:g} {unit}".rstrip()))
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(4)
        self.spin.setRange(0.0, hi * 100)
        self.spin.setToolTip("Exact dose. Values outside the trained range are extrapolations.")
        self.spin.setSuffix(f" {unit}" if unit else "")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("dose"))
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.spin)
        self.slider.valueChanged.connect(self._from_slider)
        self.spin.valueChanged.connect(self._from_spin)
        self.set_value(math.sqrt(lo * hi) if lo > 0 else hi)

    def _from_slider(self, v: int) -> None:
        x = 10 ** (math.log10(self.lo) + (math.log10(self.hi) - math.log10(self.lo))
                   * v / _SLIDER_STEPS)
        with QSignalBlocker(self.spin):
            self.spin.setValue(x)
        self.changed.emit(x)

    def _from_spin(self, x: float) -> None:
        with QSignalBlocker(self.slider):
            self.slider.setValue(self._pos(x))
        self.changed.emit(x)

    def _pos(self, x: float) -> int:
        if x <= 0:
            return 0
        f = (math.log10(x) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return int(round(min(max(f, 0.0), 1.0) * _SLIDER_STEPS))

    def set_value(self, x: float) -> None:
        with QSignalBlocker(self.spin), QSignalBlocker(self.slider):
            self.spin.setValue(float(x))
            self.slider.setValue(self._pos(float(x)))

    def value(self) -> float:
        return float(self.spin.value())


#: Models with at most this many perturbation targets offer them as a list as well.
FEW_TARGETS = 30


class PerturbationRow(QWidget):
    """Target (with autocomplete) + type + optional dose + remove button."""

    changed = Signal()
    remove_requested = Signal(object)

    def __init__(self, space, *, unit: str = "", new_genes: list[str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.space = space
        self.new_genes = list(new_genes or [])
        self.target = QLineEdit()
        self.target.setPlaceholderText("gene or drug, e.g. " + (space.targets[0] if space.targets
                                                                 else "STAT1"))
        self.target.setToolTip("What to perturb. Start typing: only targets this model was "
                               "trained on are offered." if not self.new_genes else
                               "What to perturb. Start typing: the targets this model was "
                               "trained on come first, then every gene of the gene-set priors "
                               "(never perturbed in training: predicted from the priors).")
        self.target.setClearButtonEnabled(True)
        # the trained targets first, then the genes the model knows only from the priors
        # the row owns the word list (a parentless model can be collected under the completer)
        self.words = QStringListModel(list(space.targets) + self.new_genes, self)
        comp = QCompleter(self.words, self)
        comp.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        comp.setFilterMode(Qt.MatchFlag.MatchContains)
        comp.setMaxVisibleItems(15)
        self.target.setCompleter(comp)
        self.pick: QToolButton | None = None
        if 0 < len(space.targets) <= FEW_TARGETS:   # few: offer them as a list too
            self.pick = QToolButton()
            self.pick.setText("▾")
            self.pick.setToolTip("Pick one of this model's " + str(len(space.targets)) +
                                 " perturbations")
            self.pick.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
            self.pick.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0; }")
            menu = QMenu(self.pick)
            for t in space.targets:
                menu.addAction(t, lambda t=t: self.target.setText(t))
            self.pick.setMenu(menu)
            self.target.setPlaceholderText(
                "pick from the list ▾ or type, e.g. " + space.targets[0])
        self.target.editingFinished.connect(self._target_done)
        self.type = QComboBox()
        self.type.setToolTip("How the target is perturbed (only the kinds this model saw)")
        self.type.setMinimumContentsLength(9)
        self.dose: DoseEditor | None = None
        if space.has_dose:
            lo, hi = space.dose_range or (0.001, 10.0)
            self.dose = DoseEditor(lo, hi, unit)
            self.dose.changed.connect(lambda _v: self.changed.emit())
        self.remove = QToolButton()
        self.remove.setText("✕")
        self.remove.setToolTip("Remove this perturbation")
        self.remove.clicked.connect(lambda: self.remove_requested.emit(self))
        self.status = plain(QLabel())  # quotes the target typed
        self.status.setStyleSheet("color: #b00020;")
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.target, 2)
        if self.pick is not None:
            top.addWidget(self.pick)
        top.addWidget(self.type, 1)
        if self.dose is not None:
            top.addWidget(self.dose, 3)
        top.addWidget(self.remove)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(top)
        lay.addWidget(self.status)
        self.status.hide()
        self.target.textChanged.connect(self._target_changed)
        self.type.currentIndexChanged.connect(lambda _i: self.changed.emit())
        self._fill_types("")

    def _fill_types(self, target: str) -> None:
        types = list(self.space.target_types.get(target, [])) or list(self.space.perturbation_types)
        current = self.type.currentText()
        with QSignalBlocker(self.type):
            self.type.clear()
            for t in types:
                self.type.addItem(t)
                self.type.setItemData(self.type.count() - 1, tip(TYPE_HELP.get(t.lower(), t)),
                                      Qt.ItemDataRole.ToolTipRole)
            if current in types:
                self.type.setCurrentText(current)
        self.type.setEnabled(bool(types))
        self.type.setVisible(bool(self.space.perturbation_types))

    def _target_done(self) -> None:
        """The entry is complete: a target typed in another case becomes the model's
        spelling, and the row is checked (an error shows now, not at the first keystroke)."""
        text = self.target.text().strip()
        match = [t for t in self.space.targets if t.lower() == text.lower()]
        if match and match[0] != text:
            self.target.setText(match[0])
        elif self.new_genes and not match:
            canon = self.space.canonical_target(text)   # an alias or Ensembl id -> symbol
            if canon != text:
                self.target.setText(canon)
        self.changed.emit()

    def _target_changed(self, text: str) -> None:
        self._fill_types(text.strip())
        self.changed.emit()

    def set_values(self, target: str, type_: str | None = None, dose: float | None = None) -> None:
        self.target.setText(target)
        if type_:
            self.type.setCurrentText(type_)
        if dose is not None and self.dose is not None:
            self.dose.set_value(dose)

    def perturbation(self):
        from engine.conditions.spec import Perturbation

        t = self.target.text().strip()
        if not t:
            return None
        ty = self.type.currentText() or None if self.space.perturbation_types else None
        dose = self.dose.value() if self.dose is not None else None
        return Perturbation(t, ty, dose)

    def set_problem(self, text: str | None) -> None:
        self.status.setText(text or "")
        self.status.setVisible(bool(text))
        self.target.setStyleSheet("border: 1px solid #b00020;" if text else "")


class PerturbationEditor(QWidget):
    """A list of perturbations to combine, limited to what the model was trained with."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.space = None
        self.unit = ""
        self.new_genes: list[str] = []
        self.rows: list[PerturbationRow] = []
        self.rows_box = QVBoxLayout()
        self.rows_box.setContentsMargins(0, 0, 0, 0)
        self.add_button = QPushButton("＋ Add perturbation")
        self.add_button.setToolTip("Add another gene or drug to combine with the ones above")
        self.add_button.clicked.connect(lambda: self.add_row())
        self.note = plain(QLabel())  # names the model's perturbation types
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #555;")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self.rows_box)
        btns = QHBoxLayout()
        btns.addWidget(self.add_button)
        btns.addStretch(1)
        lay.addLayout(btns)
        lay.addWidget(self.note)

    def set_space(self, space, *, unit: str = "", new_genes: list[str] | None = None) -> None:
        """``new_genes``: genes never perturbed in training the model accepts (from its gene-set
        priors), offered after the trained targets."""
        self.space, self.unit = space, unit
        self.new_genes = list(new_genes or [])
        for r in list(self.rows):
            self._remove(r, emit=False)
        if space is None or not space.targets:
            self.note.setText("This model was trained without perturbations: it generates "
                              "unperturbed (control) cells only." if space is not None else
                              "Choose a model first.")
            self.add_button.setEnabled(False)
        else:
            kinds = ", ".join(space.perturbation_types) or "perturbation"
            dose = " Doses are simulated (no real drug data)." if space.simulated_dose else ""
            n = len(space.targets)
            new = (f" Any of {len(self.new_genes):,} other genes of the gene-set priors can "
                   "be typed too: never perturbed in training, predicted from the priors."
                   if self.new_genes else "")
            self.note.setText(f"{n} target{'s' if n != 1 else ''} ({kinds}); up to "
                              f"{space.max_perturbations} combined.{dose}{new} Leave empty for "
                              "control cells.")
            self.add_row()
        self._update_add()
        self.changed.emit()

    def add_row(self) -> PerturbationRow | None:
        if self.space is None or not self.space.targets:
            return None
        if len(self.rows) >= max(self.space.max_perturbations, 1):
            return None
        row = PerturbationRow(self.space, unit=self.unit, new_genes=self.new_genes)
        row.changed.connect(self.changed)
        row.remove_requested.connect(self._remove)
        self.rows.append(row)
        self.rows_box.addWidget(row)
        self._update_add()
        self.changed.emit()
        return row

    def _remove(self, row, emit: bool = True) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self.rows_box.removeWidget(row)
            row.deleteLater()
        self._update_add()
        if emit:
            self.changed.emit()

    def _update_add(self) -> None:
        ok = self.space is not None and bool(self.space.targets) and \
            len(self.rows) < max(self.space.max_perturbations, 1)
        self.add_button.setEnabled(ok)

    def set_perturbations(self, perts) -> None:
        for r in list(self.rows):
            self._remove(r, emit=False)
        for p in perts:
            row = self.add_row()
            if row is not None:
                row.set_values(p.target, p.type, p.dose)
        if not self.rows:
            self.add_row()
        self.changed.emit()

    def perturbations(self) -> list:
        return [p for p in (r.perturbation() for r in self.rows) if p is not None]

    def check_rows(self) -> bool:
        """Flag unknown targets / types inline. True when every row is acceptable."""
        try:
            return self._check_rows()
        finally:
            self._fit_height()

    def _fit_height(self) -> None:
        """Ask the form for the height the wrapped status and hint lines need at this width
        (the form lays this widget out by its size hint, which counts them as one line each,
        so a status line under a row cut the row and the hint)."""
        lay = self.layout()
        if lay is not None and lay.hasHeightForWidth() and self.width() > 0:
            self.setMinimumHeight(lay.totalHeightForWidth(self.width()))

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit_height()

    def _check_rows(self) -> bool:
        ok = True
        if self.space is None:
            return True
        targets = set(self.space.targets)
        seen_targets = set()
        for r in self.rows:
            p = r.perturbation()
            problem = None
            if p is not None:
                typing = r.target.hasFocus() and p.target not in targets
                hits = [t for t in self.space.targets if p.target.lower() in t.lower()]
                if typing and hits:       # still typing a name the model knows: no error yet
                    r.set_problem(f"{len(hits)} target(s) match: {', '.join(hits[:5])}"
                                  f"{' …' if len(hits) > 5 else ''}. Pick one or keep typing.")
                    r.status.setStyleSheet("color: #555;")
                    r.target.setStyleSheet("")
                    ok = False
                    continue
                look = getattr(self.space, "gene_lookup", None)
                if p.target not in targets and look is not None:
                    from engine.errors import ConditionError

                    try:                  # a model with gene-set priors: a gene they know
                        name = look(p.target)
                    except ConditionError as e:
                        problem = str(e)
                    else:
                        if name not in targets and name not in seen_targets:
                            seen_targets.add(name)
                            r.set_problem(f"{name}: never perturbed in training: predicted "
                                          "from gene-set priors.")
                            r.status.setStyleSheet("color: #a15c00;")
                            r.target.setStyleSheet("")    # accepted: a note, not an error
                            continue
                        problem = None if name not in seen_targets else \
                            f"{name} is listed twice."
                        seen_targets.add(name)
                elif p.target not in targets:
                    close = [t for t in self.space.targets if p.target.lower() in t.lower()][:5]
                    problem = (f"'{p.target}' was never perturbed in this model's training data."
                               + (f" Did you mean {', '.join(close)}?" if close else ""))
                elif p.target in seen_targets:
                    problem = f"{p.target} is listed twice."
                elif p.type and self.space.target_types.get(p.target) and \
                        p.type not in self.space.target_types[p.target]:
                    problem = (f"{p.target} was only seen as "
                               f"{', '.join(self.space.target_types[p.target])}; "
                               f"{p.type} is an extrapolation.")
                    r.set_problem(problem)
                    r.status.setStyleSheet("color: #a15c00;")
                    seen_targets.add(p.target)
                    continue
                seen_targets.add(p.target)
            r.status.setStyleSheet("color: #b00020;")
            r.set_problem(problem)
            ok = ok and problem is None
        return ok
