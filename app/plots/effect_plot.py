"""The effect plot of the DE tab: each gene's predicted effect against how sure the model is of
it (|effect| / width of its 90 % interval), or, for a single-member model, against the baseline's
effect or the real one. Never a p-value between generated cells.

What to draw is decided without Qt (:class:`app.effect_table.PlotSpec`); this widget draws it::

    w = EffectPlot()
    w.show_spec(spec)     # points, axis labels, reference lines; or spec.message alone
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QStackedLayout, QVBoxLayout, QWidget

from .common import export_scene

N_LABELS = 12


class EffectPlot(QWidget):
    gene_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground("w")
        self.plot = self.view.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        for name in ("left", "bottom"):
            ax = self.plot.getAxis(name)
            ax.setPen(pg.mkPen("k"))
            ax.setTextPen(pg.mkPen("k"))
            ax.enableAutoSIPrefix(False)   # "(x0.001)" beside a log2 fold change misleads
        self._brushes = {"up": pg.mkBrush(178, 24, 43, 200), "down": pg.mkBrush(33, 102, 172, 200),
                         "ns": pg.mkBrush(170, 170, 170, 150)}
        self.scatter = pg.ScatterPlotItem(size=6, pen=None, hoverable=True,
                                          tip="{data}: x={x:+.2f}  y={y:.2f}".format)
        self.plot.addItem(self.scatter)
        self._dash = pg.mkPen((120, 120, 120), width=1, style=Qt.PenStyle.DashLine)
        self._lines: list = []
        self.diagonal = pg.InfiniteLine(pos=(0, 0), angle=45, pen=self._dash)
        self.plot.addItem(self.diagonal)
        self.labels = [pg.TextItem(color="k", anchor=(0, 1)) for _ in range(N_LABELS)]
        for t in self.labels:
            self.plot.addItem(t)
        self.highlight = pg.ScatterPlotItem(size=14, pen=pg.mkPen("k", width=2), brush=None)
        self.plot.addItem(self.highlight)
        self.scatter.sigClicked.connect(self._clicked)
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.PlainText)
        self.legend.setWordWrap(True)
        self.legend.setStyleSheet("color: #444;")
        plot_page = QWidget()
        pl = QVBoxLayout(plot_page)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.view, 1)
        pl.addWidget(self.legend)
        self.message = QLabel()
        self.message.setTextFormat(Qt.TextFormat.PlainText)   # condition labels in it
        self.message.setWordWrap(True)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setStyleSheet("color: #333; font-size: 11pt; padding: 24px;")
        self.stack = QStackedLayout()
        self.stack.addWidget(plot_page)
        self.stack.addWidget(self.message)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self.stack)
        self._x = self._y = np.zeros(0)
        self._genes: list[str] = []
        self.spec = None
        self.diagonal.hide()

    @property
    def showing_message(self) -> bool:
        return self.stack.currentWidget() is self.message

    def xlabel(self) -> str:
        return self.plot.getAxis("bottom").labelText

    def ylabel(self) -> str:
        return self.plot.getAxis("left").labelText

    def show_spec(self, spec) -> None:
        """Draw ``spec`` (app.effect_table.PlotSpec)."""
        self.spec = spec
        self.clear()
        if spec.message:
            self.message.setText(spec.message)
            self.stack.setCurrentWidget(self.message)
            return
        self.stack.setCurrentIndex(0)
        x = np.nan_to_num(np.asarray(spec.x, dtype=np.float64))
        y = np.nan_to_num(np.asarray(spec.y, dtype=np.float64))
        genes = [str(g) for g in spec.genes]
        capped = np.zeros(len(x), bool) if spec.capped is None else np.asarray(spec.capped, bool)
        brushes = [self._brushes.get(str(c), self._brushes["ns"]) for c in spec.classes]
        symbols = np.where(capped, "t1", "o").tolist()
        self._x, self._y, self._genes = x, y, genes
        self.scatter.setData(x=x, y=y, brush=brushes, symbol=symbols, data=genes)
        self.plot.setLabel("bottom", html.escape(spec.xlabel), color="k")
        self.plot.setLabel("left", html.escape(spec.ylabel), color="k")
        for pos in spec.vlines:
            self._add_line(pg.InfiniteLine(pos=pos, angle=90, pen=self._dash))
        for pos in spec.hlines:
            self._add_line(pg.InfiniteLine(pos=pos, angle=0, pen=self._dash))
        self.diagonal.setVisible(bool(spec.diagonal))
        self._place_labels(x, y, genes, np.nan_to_num(np.asarray(
            spec.score if spec.score is not None else np.abs(x) * np.abs(y), dtype=np.float64)))
        self.legend.setText(spec.legend)
        self.plot.setTitle(html.escape(str(spec.title)), color="k", size="11pt")
        self.plot.enableAutoRange()

    def _add_line(self, line) -> None:
        self.plot.addItem(line)
        self._lines.append(line)

    def _place_labels(self, x, y, genes, score) -> None:
        """Label the strongest genes, skipping any label that would overlap one already placed."""
        xr = float(np.ptp(x)) if len(x) else 1.0
        yr = float(np.ptp(y)) if len(y) else 1.0
        xr, yr = xr or 1.0, yr or 1.0
        mid = (float(np.min(x)) + float(np.max(x))) / 2 if len(x) else 0.0
        # each label's box in plot fractions: about 2% of the width per character, drawn
        # inwards (left of the point on the right half), one text line high
        placed: list[tuple[float, float, float, float]] = []
        chosen = []
        for i in np.argsort(-score):
            if len(chosen) == N_LABELS or score[i] <= 0:
                break
            px, py = x[i] / xr, y[i] / yr
            w = 0.02 * max(len(str(genes[i])), 2)
            x0, x1 = (px - w, px) if x[i] > mid else (px, px + w)
            y0, y1 = py, py + 0.05
            if any(x0 < qx1 and qx0 < x1 and y0 < qy1 and qy0 < y1
                   for qx0, qx1, qy0, qy1 in placed):
                continue
            placed.append((x0, x1, y0, y1))
            chosen.append(i)
        for k, t in enumerate(self.labels):
            if k < len(chosen):
                i = chosen[k]
                t.setText(genes[i])
                t.setAnchor((1, 1) if x[i] > mid else (0, 1))   # inwards: never clipped
                t.setPos(x[i], y[i])
            else:
                t.setText("")

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
        for line in self._lines:
            self.plot.removeItem(line)
        self._lines = []
        self.diagonal.hide()
        self._x = self._y = np.zeros(0)
        self._genes = []
        self.legend.setText("")
        for t in self.labels:
            t.setText("")

    def export(self, path, *, width: int = 1400):
        if self.showing_message:
            raise ValueError("there is no plot to save for this comparison (see the message)")
        return export_scene(self.view.scene(), path, width=width)
