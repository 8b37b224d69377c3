"""UMAP scatter: one ScatterPlotItem updated in place, a legend, hover details, gene colouring."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from .common import GREY, category_color, export_scene, sequential_cmap
from .heatmap import _style_colorbar

_N_LEVELS = 64


class EmbeddingPlot(QWidget):
    """2-D embedding of cells coloured by a category or by a numeric value (one gene)."""

    hovered = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.plot = self.view.addPlot(row=0, col=0)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.setAspectLocked(False)
        for name in ("left", "bottom"):
            ax = self.plot.getAxis(name)
            ax.setPen(pg.mkPen("k"))
            ax.setTextPen(pg.mkPen("k"))
        self.plot.setLabel("bottom", "UMAP 1", color="k")
        self.plot.setLabel("left", "UMAP 2", color="k")
        self.scatter = pg.ScatterPlotItem(size=4, pen=None, pxMode=True, hoverable=False)
        self.plot.addItem(self.scatter)
        self.marker = pg.ScatterPlotItem(size=12, pen=pg.mkPen("k", width=2), brush=None)
        self.plot.addItem(self.marker)
        # the legend sits in its own column, right of the plot, so it never hides cells
        self.legend = pg.LegendItem(labelTextColor="k", brush=pg.mkBrush(255, 255, 255),
                                    pen=pg.mkPen(200, 200, 200))
        side = self.view.addLayout(row=0, col=2)
        side.addItem(self.legend, row=0, col=0)
        side.addLabel("", row=1, col=0)
        side.layout.setRowStretchFactor(0, 0)
        side.layout.setRowStretchFactor(1, 10)
        side.setMaximumWidth(270)
        self.view.ci.layout.setColumnStretchFactor(0, 10)
        self.cmap = sequential_cmap()
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=self.cmap, interactive=False,
                                        width=12)
        self.view.addItem(self.colorbar, row=0, col=1)
        _style_colorbar(self.colorbar)
        self.colorbar.hide()
        self._legend_items: list[pg.ScatterPlotItem] = []
        self._cat_brushes: list[pg.QtGui.QBrush] = []
        self._lvl_brushes = [pg.mkBrush(*self.cmap.map(x, mode="byte")[:3], 220)
                             for x in np.linspace(0, 1, _N_LEVELS)]
        self.coords = np.zeros((0, 2), dtype=np.float32)
        self.info = QLabel("Hover over a cell to see what it is.")
        self.info.setTextFormat(Qt.TextFormat.PlainText)  # condition and cell-type names
        self.info.setStyleSheet("color: #444;")
        self.info.setWordWrap(True)
        self.describe = None  # callable(index) -> str
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.info)
        self.view.scene().sigMouseMoved.connect(self._on_mouse)

    # -- data -------------------------------------------------------------------------------
    def set_coords(self, coords: np.ndarray) -> None:
        self.coords = np.ascontiguousarray(coords, dtype=np.float32)
        self.marker.setData([], [])

    def color_by_category(self, values, *, order: list[str] | None = None,
                          grey: set[str] | None = None, title: str = "") -> None:
        values = np.asarray(values, dtype=object).astype(str)
        cats = order or sorted(set(values.tolist()))
        grey = grey or set()
        brushes, lut = [], {}
        k = g = 0
        greys = [GREY, (140, 140, 140), (95, 95, 95), (220, 220, 220)]
        for c in cats:
            if c in grey:
                col = greys[g % len(greys)]
                g += 1
            else:
                col = category_color(k)
                k += 1
            lut[c] = len(brushes)
            brushes.append(pg.mkBrush(*col, 200 if c in grey else 230))
        self._cat_brushes = brushes
        idx = np.array([lut.get(v, 0) for v in values], dtype=np.int64)
        brush_arr = np.empty(len(values), dtype=object)
        brush_arr[:] = [brushes[i] for i in idx] if len(values) else []
        self._draw(brush_arr, draw_grey_first=idx, grey_idx={lut[c] for c in grey if c in lut})
        self.colorbar.hide()
        self.legend.clear()
        self._legend_items = []
        for c in cats[:25]:
            item = pg.ScatterPlotItem(size=9, pen=None, brush=brushes[lut[c]])
            self._legend_items.append(item)
            self.legend.addItem(item, html.escape(_short(c)))  # legend labels are HTML
        if len(cats) > 25:
            self.legend.addItem(pg.ScatterPlotItem(size=0), f"… and {len(cats) - 25} more")
        self.legend.show()
        self.plot.setTitle(html.escape(title), color="k", size="11pt")

    def color_by_value(self, values: np.ndarray, *, title: str = "") -> None:
        v = np.nan_to_num(np.asarray(values, dtype=np.float32))
        hi = float(np.percentile(v, 99.5)) if v.size else 1.0
        hi = hi if hi > 0 else max(float(v.max()) if v.size else 1.0, 1e-6)
        lv = np.clip((v / hi) * (_N_LEVELS - 1), 0, _N_LEVELS - 1).astype(np.int64)
        brush_arr = np.empty(len(v), dtype=object)
        brush_arr[:] = [self._lvl_brushes[i] for i in lv] if len(v) else []
        order = np.argsort(lv, kind="stable")  # high expressers drawn on top
        self._draw(brush_arr, order=order)
        self.legend.clear()
        self.legend.hide()
        self.colorbar.setLevels((0.0, hi))
        self.colorbar.show()
        self.plot.setTitle(html.escape(title), color="k", size="11pt")

    def _draw(self, brushes, *, order=None, draw_grey_first=None, grey_idx=None) -> None:
        n = len(self.coords)
        if order is None:
            order = np.arange(n)
            if draw_grey_first is not None and grey_idx:
                is_grey = np.isin(draw_grey_first, list(grey_idx))
                order = np.concatenate([np.flatnonzero(is_grey), np.flatnonzero(~is_grey)])
        self._order = order
        self.scatter.setData(x=self.coords[order, 0], y=self.coords[order, 1],
                             brush=brushes[order] if n else [], data=order)
        self.plot.enableAutoRange()

    def clear(self) -> None:
        self.coords = np.zeros((0, 2), dtype=np.float32)
        self.scatter.setData([], [])
        self.marker.setData([], [])
        self.legend.clear()

    # -- hover --------------------------------------------------------------------------------
    def _on_mouse(self, pos) -> None:
        if not len(self.coords) or not self.plot.sceneBoundingRect().contains(pos):
            return
        vb = self.plot.vb
        p = vb.mapSceneToView(pos)
        (x0, x1), (y0, y1) = vb.viewRange()
        sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
        d = ((self.coords[:, 0] - p.x()) / sx) ** 2 + ((self.coords[:, 1] - p.y()) / sy) ** 2
        i = int(np.argmin(d))
        if d[i] > 0.0004:  # farther than ~2% of the view
            self.marker.setData([], [])
            return
        self.marker.setData([self.coords[i, 0]], [self.coords[i, 1]])
        if self.describe is not None:
            self.info.setText(self.describe(i))
        self.hovered.emit(i)

    def export(self, path, *, width: int = 1400):
        return export_scene(self.view.scene(), path, width=width)


def _short(label: str, limit: int = 34) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
