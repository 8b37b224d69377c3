"""A matplotlib figure on screen: the figure rendered (on a worker) to an image that is scaled to
the widget, with the figure kept for export (app.figures.save_figure: SVG, PDF, PNG at a dpi)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget


class FigureView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = None
        self._pixmap: QPixmap | None = None
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.image.setStyleSheet("background: white; color: #555;")
        self.image.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.image, 1)
        self.show_message("")

    def show_message(self, text: str) -> None:
        self.figure = None
        self._pixmap = None
        self.image.setPixmap(QPixmap())
        self.image.setText(text)

    def set_figure(self, figure, png: bytes) -> None:
        self.figure = figure
        pm = QPixmap()
        pm.loadFromData(png, "PNG")
        self._pixmap = pm
        self.image.setText("")
        self._rescale()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is None or self._pixmap.isNull():
            return
        w, h = max(self.image.width(), 10), max(self.image.height(), 10)
        pm = self._pixmap
        if pm.width() > w or pm.height() > h:   # shrink to fit; never blow up (blurry)
            pm = pm.scaled(w, h, Qt.AspectRatioMode.KeepAspectRatio,
                           Qt.TransformationMode.SmoothTransformation)
        self.image.setPixmap(pm)

    def export(self, path, *, dpi: int = 300):
        from ..figures import save_figure

        if self.figure is None:
            raise ValueError("this view has no figure yet")
        return save_figure(self.figure, path, dpi=dpi)


__all__ = ["FigureView"]
