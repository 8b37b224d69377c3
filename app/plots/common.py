"""Shared plot helpers: colour maps, category palette, export of a pyqtgraph scene."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyqtgraph as pg

# Okabe-Ito + Tableau-like palette, readable on white and for colour-blind viewers
PALETTE = [
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233),
    (213, 94, 0), (240, 228, 66), (0, 0, 0), (148, 103, 189), (140, 86, 75),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]
GREY = (190, 190, 190)


def diverging_cmap() -> pg.ColorMap:
    """Blue - white - red, for changes against the control (symmetric levels)."""
    return pg.ColorMap(pos=np.array([0.0, 0.25, 0.5, 0.75, 1.0]),
                       color=np.array([(33, 102, 172), (146, 197, 222), (247, 247, 247),
                                       (244, 165, 130), (178, 24, 43)], dtype=np.ubyte))


def sequential_cmap() -> pg.ColorMap:
    """Viridis-like, for expression of one gene."""
    return pg.ColorMap(pos=np.linspace(0, 1, 5),
                       color=np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140),
                                       (94, 201, 98), (253, 231, 37)], dtype=np.ubyte))


def category_color(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def export_scene(item, path: str | os.PathLike, *, width: int = 1400) -> Path:
    """Write a plot (a PlotItem, GraphicsLayout or scene) to .png or .svg, atomically."""
    import pyqtgraph.exporters as ex

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ValueError(f"cannot export a plot as {suffix or 'a file without extension'}; "
                         "use .png or .svg")
    from engine.export import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".png":
            exp = ex.ImageExporter(item)
            exp.parameters()["width"] = int(width)
            exp.export(str(tmp))
        else:
            _render_svg(item, str(tmp))
    return path


def _render_svg(item, path: str) -> None:
    """Render a scene into an SVG with QSvgGenerator (pyqtgraph's SVGExporter trips over
    colour-bar gradients); text and lines stay vectors, images are embedded."""
    from PySide6.QtCore import QRectF, QSize
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    scene = item.scene() if hasattr(item, "scene") and callable(item.scene) else item
    rect = scene.sceneRect() if item is scene else item.sceneBoundingRect()
    gen = QSvgGenerator()
    gen.setFileName(path)
    gen.setSize(QSize(int(rect.width()), int(rect.height())))
    gen.setViewBox(QRectF(0, 0, rect.width(), rect.height()))
    gen.setTitle("Perturb Studio plot")
    painter = QPainter(gen)
    try:
        scene.render(painter, QRectF(0, 0, rect.width(), rect.height()), rect)
    finally:
        painter.end()
