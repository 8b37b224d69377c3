"""The run bar at the bottom of the window: the foreground job's phase, progress, speed and time
left, and its Cancel button."""

from __future__ import annotations

import math

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from .richtext import plain


class RunBar(QWidget):
    """Progress of the running job: phase, bar, cells/s and time left, Cancel."""

    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = plain(QLabel("Ready."))  # shows file and model names
        self.label.setMinimumWidth(260)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.bar.setFormat("%p%")
        self.bar.setToolTip("Progress of the running job")
        self.rate = plain(QLabel(""))
        self.rate.setMinimumWidth(230)
        self.rate.setToolTip("Speed and estimated time left")
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop the running job (Esc). Nothing half-done is kept.")
        self.cancel.clicked.connect(self.cancel_clicked)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 4, 8, 4)
        lay.addWidget(self.label)
        lay.addWidget(self.bar, 1)
        lay.addWidget(self.rate)
        lay.addWidget(self.cancel)
        self.idle()

    def start(self, text: str) -> None:
        self.label.setText(text)
        self.bar.setFormat("%p%")
        self.bar.setValue(0)
        self.bar.setRange(0, 0)  # busy until the first progress record
        self.rate.setText("starting…")
        self.cancel.setEnabled(True)

    def update(self, p) -> None:  # noqa: D401 - Qt-style name clash is harmless here
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * min(max(p.fraction, 0.0), 1.0)))
        parts = []
        if p.rate:
            unit = "cells/s" if "cell" in p.phase or "generat" in p.phase or "perturb" in p.phase \
                else "steps/s"
            parts.append(f"{p.rate:,.0f} {unit}")
        if p.eta_s is not None and math.isfinite(p.eta_s):
            parts.append(f"{_fmt_time(p.eta_s)} left")
        if p.total:
            parts.append(f"{p.done:,}/{p.total:,}")
        self.rate.setText(" · ".join(parts))
        self.label.setText(p.phase[:1].upper() + p.phase[1:] + "…")

    def cancelling(self) -> None:
        self.label.setText("Cancelling…")
        self.cancel.setEnabled(False)

    def idle(self, text: str = "Ready.") -> None:
        self.label.setText(text)
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.bar.setFormat("")
        self.rate.setText("")
        self.cancel.setEnabled(False)


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"
