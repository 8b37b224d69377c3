"""The QApplication of Perturb Studio: names, desktop file, logging.

Used by ``perturb-studio`` (app.__main__), the screenshot tour (app.tour) and the benchmarks; it
imports nothing of theirs, so none of them imports another through it.
"""

from __future__ import annotations

import sys


def make_app(argv: list[str] | None = None):
    """The running QApplication, or a new one with ``argv`` (Qt's own options) after the
    program name; named for settings, the log folder and the desktop file."""
    from PySide6.QtWidgets import QApplication

    from app import APP_NAME, ORG_NAME, __version__
    from app.settings import setup_logging

    app = QApplication.instance() or QApplication([sys.argv[0], *(argv or [])])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORG_NAME)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("perturb-studio")
    setup_logging()
    return app
