"""The window's dialogs: the error box, About, the keyboard shortcuts, the file choosers."""

from __future__ import annotations

import html
import sys
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QIcon
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from . import APP_NAME, __version__
from . import settings as cfg
from .panels.data import FILE_FILTER


def icon_path() -> Path:
    return Path(__file__).resolve().parents[1] / "resources" / "icons" / "perturb-studio.png"


def error_box(parent: QWidget, message: str, details: str = "",
              title: str = "Something went wrong") -> QMessageBox:
    """A non-blocking warning box quoting ``message`` as plain text (it names files, models
    and genes), with the log file's place and the details folded away."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok,
                      parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setInformativeText(f"Details are in the log file: {cfg.log_path()}")
    if details:
        box.setDetailedText(details)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setObjectName("error-box")
    box.open()
    return box


def about_text(device_text: str | None) -> str:
    import pyqtgraph
    import PySide6

    import engine

    dev = device_text
    if dev is None:
        if "torch" in sys.modules:
            try:
                d = engine.device_info()
                dev = f"Device: {d['kind']} — {d['name']}"
            except Exception:  # noqa: BLE001
                dev = "Device: unknown"
        else:
            dev = "Device: detected when the first model loads"
    torch_v = sys.modules["torch"].__version__ if "torch" in sys.modules else "not loaded yet"
    return (f"<h3>{APP_NAME} {__version__}</h3>"
            "<p>In-silico perturbation experiments with a generative model of single-cell "
            "gene expression.</p>"
            f"<p>engine {engine.__version__} · Python {sys.version.split()[0]} · "
            f"PySide6 {PySide6.__version__} · pyqtgraph {pyqtgraph.__version__} · "
            f"torch {torch_v}</p><p>{html.escape(dev)}</p>"
            f"<p>Settings and log: {html.escape(str(cfg.config_dir()))}</p>")


def show_about(parent: QWidget, text: str) -> None:
    box = QMessageBox(QMessageBox.Icon.NoIcon, f"About {APP_NAME}", text,
                      QMessageBox.StandardButton.Ok, parent)
    if icon_path().exists():
        box.setIconPixmap(QIcon(str(icon_path())).pixmap(64, 64))
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()


def show_shortcuts(parent: QWidget) -> None:
    """A table of the shortcuts of ``parent``'s actions, and of the pages' own."""
    rows = []
    for a in parent.actions():
        if not a.shortcut().isEmpty():
            rows.append(f"<tr><td><b>{a.shortcut().toString()}</b></td>"
                        f"<td>{html.escape(a.text().replace('&', ''))}</td></tr>")
    rows += ["<tr><td><b>Ctrl+Return</b></td><td>Generate (on the Compose page)</td></tr>",
             "<tr><td><b>Ctrl+D</b></td><td>Add condition to experiment</td></tr>"]
    box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts",
                      "<table cellpadding='3'>" + "".join(rows) + "</table>",
                      QMessageBox.StandardButton.Ok, parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()


def open_log() -> None:
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(cfg.log_path())))


# -- file choosers ---------------------------------------------------------------------------------
def ask_dataset(parent: QWidget) -> str:
    start = str(Path(cfg.recent_files()[0]).parent) if cfg.recent_files() else ""
    path, _ = QFileDialog.getOpenFileName(parent, "Open dataset", start, FILE_FILTER)
    return path


def ask_folder(parent: QWidget, title: str, start: str = "") -> str:
    return QFileDialog.getExistingDirectory(parent, title, start)


#: kind -> (dialog title, file filter, default suffix) of File > Save
SAVE_KINDS = {
    "h5ad": ("Save cells", "AnnData (*.h5ad)", ".h5ad"),
    "csv": ("Save cells", "CSV table (*.csv)", ".csv"),
    "plot": ("Save figure", "SVG vector image (*.svg);;PDF vector document (*.pdf);;"
                            "PNG image (*.png)", ".svg"),
    "de": ("Save effect table", "CSV table (*.csv)", ".csv"),
}


def ask_save(parent: QWidget, kind: str, default: Path) -> str:
    title, filt, _suffix = SAVE_KINDS[kind]
    path, _ = QFileDialog.getSaveFileName(parent, title, str(default), filt)
    return path


def with_suffix(path: str, kind: str) -> str:
    """``path`` ending in a suffix the writer of ``kind`` produces (.svg, .pdf or .png for a
    figure)."""
    suffix = SAVE_KINDS[kind][2]
    ok = (".png", ".svg", ".pdf") if kind == "plot" else (suffix,)
    if kind == "de" or path.lower().endswith(ok):
        return path
    return path + suffix
