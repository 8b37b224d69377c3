"""Live training-loss curve: one PlotDataItem per training phase, appended in place."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from .common import category_color, export_scene


class PlainLogAxis(pg.AxisItem):
    """A log-scale axis whose ticks read as plain numbers (0.002, 0.01, 3, 300), never
    "x0.001" or "3·10²"."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.enableAutoSIPrefix(False)

    def logTickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        out = []
        for v in values:      # label 1, 2 and 5 of each decade; the other ticks stay bare
            x = 10 ** float(v)
            mant = x / 10 ** np.floor(np.log10(x)) if x > 0 else 0
            out.append(plain_number(x) if any(abs(mant - m) < 1e-6 * m for m in (1, 2, 5))
                       else "")
        return out

    def tickStrings(self, values, scale, spacing):  # noqa: N802
        if self.logMode:
            return self.logTickStrings(values, scale, spacing)
        return [plain_number(float(v) * scale) for v in values]


def plain_number(v: float) -> str:
    """0.00213 -> '0.0021', 3.0 -> '3', 25000 -> '25,000'."""
    if not np.isfinite(v):
        return ""
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 1 or a == 0:
        return f"{v:.3g}"
    return f"{v:.2g}" if a >= 1e-4 else f"{v:.1e}"


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.plot = self.view.addPlot(axisItems={"left": PlainLogAxis("left"),
                                                 "bottom": PlainLogAxis("bottom")})
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setLogMode(y=True)
        for name in ("left", "bottom"):
            ax = self.plot.getAxis(name)
            ax.setPen(pg.mkPen("k"))
            ax.setTextPen(pg.mkPen("k"))
        self.plot.setLabel("bottom", "training step", color="k")
        self.plot.setLabel("left", "loss", color="k")
        legend = self.plot.addLegend(offset=(-10, 10), labelTextColor="k",
                                     brush=pg.mkBrush(255, 255, 255, 230),
                                     pen=pg.mkPen(200, 200, 200))
        legend.setZValue(100)        # above the curves, on a white box: never under a line
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
