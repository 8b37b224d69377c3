"""Live training-loss curve: one PlotDataItem per training phase, appended in place."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from .common import category_color, export_scene


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.plot = self.view.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setLogMode(y=True)
        for name in ("left", "bottom"):
            ax = self.plot.getAxis(name)
            ax.setPen(pg.mkPen("k"))
            ax.setTextPen(pg.mkPen("k"))
        self.plot.setLabel("bottom", "training step", color="k")
        self.plot.setLabel("left", "loss", color="k")
        self.plot.addLegend(offset=(-10, 10), labelTextColor="k")
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.data: dict[str, list[tuple[float, float]]] = {}
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view)

    def reset(self) -> None:
        for c in self.curves.values():
            c.setData([], [])
        self.data = {k: [] for k in self.data}

    def add_point(self, phase: str, step: float, loss: float) -> None:
        if loss is None or not np.isfinite(loss) or loss <= 0:
            return
        if phase not in self.curves:
            col = category_color(len(self.curves))
            self.curves[phase] = self.plot.plot([], [], pen=pg.mkPen(col, width=2), name=phase)
            self.data[phase] = []
        pts = self.data.setdefault(phase, [])
        pts.append((float(step), float(loss)))
        arr = np.asarray(pts)
        self.curves[phase].setData(arr[:, 0], arr[:, 1])

    def export(self, path, *, width: int = 1200):
        return export_scene(self.view.scene(), path, width=width)
