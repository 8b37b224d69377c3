"""Heatmap of changes against the control: one ImageItem with a colour bar and text labels.

Usable on its own (the self-test uses it headless)::

    w = HeatmapPlot()
    w.set_data(matrix, row_labels, col_labels)   # matrix: rows x columns
    w.export("heatmap.png")                      # or .svg
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .common import diverging_cmap, export_scene

READOUT_HINT = "Hover over a cell of the heatmap to see its value."

class HeatmapPlot(QWidget):
    """Rows x columns matrix with labels, a symmetric diverging colour bar and hover read-out."""

    hovered = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, value_label: str = "change vs control "
                 "(mean log expression)") -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.plot = self.view.addPlot(row=0, col=0)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(-1, 1), colorMap=diverging_cmap(),
                                        label=value_label, interactive=False, width=14)
        self.colorbar.setImageItem(self.image)
        self.view.addItem(self.colorbar, row=0, col=1)
        _style_colorbar(self.colorbar)
        for name in ("left", "bottom", "top"):
            ax = self.plot.getAxis(name)
            ax.setPen(pg.mkPen("k"))
            ax.setTextPen(pg.mkPen("k"))
        font = pg.QtGui.QFont()
        font.setPointSize(8)
        for name in ("bottom", "left"):
            # labels are thinned in _update_ticks() when they would overlap
            self.plot.getAxis(name).setStyle(tickLength=0, tickFont=font, autoExpandTextSpace=True,
                                             hideOverlappingLabels=False)
        self.readout = QLabel(READOUT_HINT)
        self.readout.setTextFormat(Qt.TextFormat.PlainText)  # gene and condition names
        self.readout.setStyleSheet("color: #444;")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.readout)
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.row_labels: list[str] = []
        self.col_labels: list[str] = []
        self.view.scene().sigMouseMoved.connect(self._on_mouse)

    def set_data(self, matrix, row_labels, col_labels, *, title: str | None = None) -> None:
        m = np.nan_to_num(np.asarray(matrix, dtype=np.float32))
        if m.ndim != 2:
            raise ValueError("heatmap matrix must be 2-D")
        rows, cols = list(map(str, row_labels)), list(map(str, col_labels))
        if m.shape != (len(rows), len(cols)):
            raise ValueError(f"matrix shape {m.shape} does not match {len(rows)} row and "
                             f"{len(cols)} column labels")
        self.matrix, self.row_labels, self.col_labels = m, rows, cols
        vmax = float(np.max(np.abs(m))) if m.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        self.image.setImage(m, autoLevels=False, levels=(-vmax, vmax))
        self.colorbar.setLevels((-vmax, vmax))
        self.image.setRect(0, 0, max(len(cols), 1), max(len(rows), 1))
        self._update_ticks()
        self.plot.setRange(xRange=(0, max(len(cols), 1)), yRange=(0, max(len(rows), 1)),
                           padding=0)
        if title is not None:
            self.plot.setTitle(html.escape(str(title)), color="k", size="11pt")
        # give long gene names room
        longest = max((len(r) for r in rows), default=4)
        self.plot.getAxis("left").setWidth(int(12 + 7 * min(longest, 24)))

    def _update_ticks(self) -> None:
        """Show every row / column label that fits; thin them out evenly when they would
        overlap (hover shows the name of any cell)."""
        rows, cols = self.row_labels, self.col_labels
        h = self.plot.vb.height() or self.height() * 0.8 or 600
        w = self.plot.vb.width() or self.width() * 0.7 or 800
        step_r = max(1, int(np.ceil(len(rows) * 13 / max(h, 1))))
        # a column label may use the width of its column (at least 28 characters)
        limit = max(28, int((w / max(len(cols), 1) - 10) / 6.5))
        longest = max((len(_short(c, limit)) for c in cols), default=1)
        step_c = max(1, int(np.ceil(len(cols) * (6.5 * longest + 10) / max(w, 1))))
        self.plot.getAxis("left").setTicks(
            [[(i + 0.5, r) for i, r in enumerate(rows) if i % step_r == 0]])
        self.plot.getAxis("bottom").setTicks(
            [[(j + 0.5, _short(c, limit)) for j, c in enumerate(cols) if j % step_c == 0]])

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.matrix.size:
            self._update_ticks()

    def clear(self) -> None:
        self.readout.setText(READOUT_HINT)    # no hover line left from the previous heatmap
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.row_labels, self.col_labels = [], []
        self.image.setImage(np.zeros((1, 1), dtype=np.float32), autoLevels=False, levels=(-1, 1))
        self.plot.getAxis("left").setTicks([[]])
        self.plot.getAxis("bottom").setTicks([[]])

    def _on_mouse(self, pos) -> None:
        if not self.matrix.size or not self.plot.sceneBoundingRect().contains(pos):
            return
        p = self.plot.vb.mapSceneToView(pos)
        i, j = int(np.floor(p.y())), int(np.floor(p.x()))
        if 0 <= i < len(self.row_labels) and 0 <= j < len(self.col_labels):
            text = (f"{self.row_labels[i]}  ·  {self.col_labels[j]}:  "
                    f"{self.matrix[i, j]:+.3f}")
            self.readout.setText(text)
            self.hovered.emit(text)

    def export(self, path, *, width: int = 1400):
        """Save the heatmap with its colour bar as .png or .svg (atomic)."""
        return export_scene(self.view.scene(), path, width=width)


def _style_colorbar(bar) -> None:
    """Black axis text and label on a ColorBarItem (pyqtgraph draws them grey by default)."""
    for name in ("left", "right", "top", "bottom"):
        try:
            ax = bar.getAxis(name)
        except Exception:  # noqa: BLE001 - not every ColorBarItem has every axis
            continue
        ax.setPen(pg.mkPen("k"))
        ax.setTextPen(pg.mkPen("k"))
        if ax.labelText:
            ax.setLabel(ax.labelText, color="#222")


def _short(label: str, limit: int = 28) -> str:
    """``label`` cut to ``limit`` characters; a label with a `` · `` suffix (a baseline or the
    real cells of a condition) keeps its suffix and loses the middle instead."""
    if len(label) <= limit:
        return label
    head, sep, tail = label.rpartition(" · ")
    if sep and len(tail) + 4 < limit:
        return head[: limit - len(tail) - 4] + "…" + sep + tail
    return label[: limit - 1] + "…"


def _demo() -> None:  # pragma: no cover - manual look
    app = pg.mkQApp()
    w = HeatmapPlot()
    rng = np.random.default_rng(0)
    w.set_data(rng.normal(size=(20, 3)), [f"GENE{i}" for i in range(20)], ["a", "b", "c"])
    w.resize(600, 700)
    w.show()
    app.exec()


if __name__ == "__main__":  # pragma: no cover
    _demo()
