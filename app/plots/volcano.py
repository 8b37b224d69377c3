"""Volcano plot of a differential-expression table: log2 fold change vs -log10 adjusted p."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget

from .common import export_scene

N_LABELS = 12


class VolcanoPlot(QWidget):
    gene_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None, *, lfc: float = 1.0,
                 padj: float = 0.05) -> None:
        super().__init__(parent)
        self.lfc_cut, self.padj_cut = lfc, padj
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.plot = self.view.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        for name in ("left", "bottom"):
            ax = self.plot.getAxis(name)
            ax.setPen(pg.mkPen("k"))
            ax.setTextPen(pg.mkPen("k"))
        self.plot.setLabel("bottom", "log2 fold change (generated vs control)", color="k")
        self.plot.setLabel("left", "-log10 adjusted p", color="k")
        self._brushes = {"up": pg.mkBrush(178, 24, 43, 200), "down": pg.mkBrush(33, 102, 172, 200),
                         "ns": pg.mkBrush(170, 170, 170, 150)}
        self.scatter = pg.ScatterPlotItem(size=6, pen=None, hoverable=True,
                                          tip="{data}: x={x:.2f}  y={y:.1f}".format)
        self.plot.addItem(self.scatter)
        dash = pg.mkPen((120, 120, 120), width=1, style=pg.QtCore.Qt.PenStyle.DashLine)
        self.vlines = [pg.InfiniteLine(pos=p, angle=90, pen=dash) for p in (-lfc, lfc)]
        self.hline = pg.InfiniteLine(pos=-np.log10(padj), angle=0, pen=dash)
        for line in (*self.vlines, self.hline):
            self.plot.addItem(line)
        self.labels = [pg.TextItem(color="k", anchor=(0, 1)) for _ in range(N_LABELS)]
        for t in self.labels:
            self.plot.addItem(t)
        self.highlight = pg.ScatterPlotItem(size=14, pen=pg.mkPen("k", width=2), brush=None)
        self.plot.addItem(self.highlight)
        self.scatter.sigClicked.connect(self._clicked)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view)
        self._x = self._y = np.zeros(0)
        self._genes: list[str] = []

    def set_table(self, genes, log2fc, padj, *, title: str = "") -> None:
        x = np.nan_to_num(np.asarray(log2fc, dtype=np.float64))
        p = np.clip(np.nan_to_num(np.asarray(padj, dtype=np.float64), nan=1.0), 0.0, 1.0)
        with np.errstate(divide="ignore"):
            y = -np.log10(p)
        # p-values that underflow to 0 would sit at infinity: draw them as triangles just above
        # the highest finite point instead
        finite = np.isfinite(y)
        top_y = float(y[finite].max()) if finite.any() else 1.0
        cap = max(top_y * 1.08, top_y + 1.0)
        capped = ~finite
        y = np.where(capped, cap, y)
        genes = [str(g) for g in genes]
        sig = p < self.padj_cut
        cls = np.where(sig & (x >= self.lfc_cut), "up",
                       np.where(sig & (x <= -self.lfc_cut), "down", "ns"))
        brushes = [self._brushes[c] for c in cls]
        symbols = np.where(capped, "t1", "o").tolist()
        self._x, self._y, self._genes = x, y, genes
        self.scatter.setData(x=x, y=y, brush=brushes, symbol=symbols, data=genes)
        # label the strongest genes, skipping any label that would overlap one already placed
        score = np.abs(x) * np.minimum(y, cap)
        xr = float(np.ptp(x)) or 1.0
        yr = float(np.ptp(y)) or 1.0
        placed: list[tuple[float, float]] = []
        chosen = []
        for i in np.argsort(-score):
            if len(chosen) == N_LABELS or score[i] <= 0:
                break
            px, py = x[i] / xr, y[i] / yr
            if any(abs(px - qx) < 0.09 and abs(py - qy) < 0.035 for qx, qy in placed):
                continue
            placed.append((px, py))
            chosen.append(i)
        for k, t in enumerate(self.labels):
            if k < len(chosen):
                i = chosen[k]
                t.setText(genes[i])
                t.setPos(x[i], y[i])
            else:
                t.setText("")
        self.highlight.setData([], [])
        self.plot.setTitle(html.escape(str(title)) + ("  (▲ p below 1e-300)" if capped.any() else ""),
                           color="k", size="11pt")
        self.plot.enableAutoRange()

    def highlight_gene(self, gene: str) -> None:
        try:
            i = self._genes.index(gene)
        except ValueError:
            self.highlight.setData([], [])
            return
        self.highlight.setData([self._x[i]], [self._y[i]])

    def _clicked(self, _item, points, *_) -> None:
        if len(points):
            self.gene_clicked.emit(str(points[0].data()))

    def clear(self) -> None:
        self.scatter.setData([], [])
        self.highlight.setData([], [])
        for t in self.labels:
            t.setText("")

    def export(self, path, *, width: int = 1400):
        return export_scene(self.view.scene(), path, width=width)
