"""``perturb-studio`` / ``python -m app``: open the window, or hand over to the CLI.

- ``perturb-studio train|generate|evaluate|models|bench ...``, ``-h``, ``--version``: engine CLI
- ``perturb-studio --selftest``: check an installation (app.selftest)
- ``perturb-studio --screenshot-tour DIR``: run the main flow and save a PNG of each screen
- ``perturb-studio [FILE]``: open the window (optionally loading a dataset)

Only Qt is imported before the window shows; torch, anndata and scanpy load on worker threads.
"""

from __future__ import annotations

import os
import sys

CLI_COMMANDS = {"train", "generate", "evaluate", "models", "bench"}


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # the UMAP helper process in a frozen (PyInstaller) build
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in CLI_COMMANDS or argv[0] in ("-h", "--help", "--version")):
        from engine.cli import main as cli_main

        return int(cli_main(argv) or 0)
    if argv and argv[0] == "--selftest":
        from app.selftest import run

        return int(run() or 0)
    if argv and argv[0] == "--screenshot-tour":
        if len(argv) < 2:
            print("usage: perturb-studio --screenshot-tour DIR", file=sys.stderr)
            return 2
        from app.tour import run_tour

        return run_tour(argv[1])
    return run_gui(argv)


def make_app(argv: list[str] | None = None):
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


def run_gui(argv: list[str]) -> int:
    app = make_app(argv)
    from app.main_window import MainWindow

    win = MainWindow()
    win.show()
    files = [a for a in argv if not a.startswith("-")]
    if files and os.path.exists(files[0]):
        win.load_dataset(files[0])
    if os.environ.get("PERTURB_STUDIO_EXIT_AFTER_SHOW"):  # used by the start-up benchmark
        from PySide6.QtCore import QTimer

        QTimer.singleShot(0, app.quit)
    code = int(app.exec())
    win.jobs.shutdown()  # never let Python tear down a QThread that is still running
    return code


if __name__ == "__main__":
    sys.exit(main())
