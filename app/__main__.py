"""``perturb-studio`` / ``python -m app``: open the window, or hand over to the CLI.

- ``perturb-studio train|generate|evaluate|models|bench ...``, ``-h``, ``--version``: engine CLI
- ``perturb-studio --selftest``: check an installation (app.selftest)
- ``perturb-studio --screenshot-tour DIR``: run the main flow and save a PNG of each screen
- ``perturb-studio [FILE]``: open the window (optionally loading a dataset)

Anything else (a misspelt command, an unknown option, a file that does not exist) exits with
status 2 and the list of commands, before Qt is imported: a script never hangs on a window it
cannot see.

Only Qt is imported before the window shows; torch, anndata and scanpy load on worker threads.
"""

from __future__ import annotations

import difflib
import os
import sys

from engine.cli import COMMANDS  # the one list of subcommands (engine.cli imports no torch)

APP_OPTIONS = ("--selftest", "--screenshot-tour")
CLI_OPTIONS = ("-h", "--help", "--version")
#: Qt's own command-line options (QGuiApplication / QApplication), with whether they take a value.
QT_OPTIONS = {"platform": True, "platformpluginpath": True, "platformtheme": True,
              "plugin": True, "qwindowgeometry": True, "qwindowicon": True,
              "qwindowtitle": True, "session": True, "style": True, "stylesheet": True,
              "display": True, "geometry": True, "qmljsdebugger": False, "reverse": False,
              "widgetcount": False, "nograb": False, "dograb": False, "sync": False}


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # the UMAP helper process in a frozen (PyInstaller) build
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in COMMANDS or argv[0] in CLI_OPTIONS):
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
    problem = gui_args_problem(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        print(f"commands: {', '.join(COMMANDS)} (perturb-studio COMMAND -h for help); app "
              "options: --selftest, --screenshot-tour DIR; or a data file to open in the app",
              file=sys.stderr)
        return 2
    return run_gui(argv)


def _qt_option(arg: str) -> tuple[bool, bool]:
    """(is a Qt option, takes the next argument as its value)."""
    if arg.startswith("-psn_"):                  # macOS Finder's process serial number
        return True, False
    name = arg.lstrip("-")
    if not arg.startswith("-") or arg.startswith("---") or not name:
        return False, False
    name, eq, _ = name.partition("=")
    if name not in QT_OPTIONS:
        return False, False
    return True, QT_OPTIONS[name] and not eq


def gui_args_problem(argv: list[str]) -> str | None:
    """Why ``argv`` cannot open the window (a misspelt command, an unknown option, a missing
    file), with a "did you mean", or None when it can."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        is_qt, takes_value = _qt_option(arg)
        if is_qt:
            i += 2 if takes_value else 1
            continue
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg, [*APP_OPTIONS, *CLI_OPTIONS], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"unknown option {arg!r}{hint}"
        if not os.path.exists(arg):
            close = difflib.get_close_matches(arg, COMMANDS, n=1)
            if close:
                return f"{arg!r} is not a command; did you mean {close[0]!r}?"
            looks_like_path = os.sep in arg or "/" in arg or "." in arg
            return (f"no such file: {arg!r}" if looks_like_path
                    else f"{arg!r} is neither a command nor an existing file")
        i += 1
    return None


def run_gui(argv: list[str]) -> int:
    from app.application import make_app

    app = make_app(argv)
    from app.main_window import MainWindow

    win = MainWindow()
    win.show()
    files = _files(argv)
    if files:
        win.load_dataset(files[0])
    if os.environ.get("PERTURB_STUDIO_EXIT_AFTER_SHOW"):  # used by the start-up benchmark
        from PySide6.QtCore import QTimer

        QTimer.singleShot(0, app.quit)
    code = int(app.exec())
    win.jobs.shutdown()  # never let Python tear down a QThread that is still running
    return code


def _files(argv: list[str]) -> list[str]:
    """The data files among ``argv`` (skipping Qt's options and their values)."""
    out, i = [], 0
    while i < len(argv):
        is_qt, takes_value = _qt_option(argv[i])
        if not is_qt and not argv[i].startswith("-") and os.path.exists(argv[i]):
            out.append(argv[i])
        i += (2 if takes_value else 1) if is_qt else 1
    return out


def __getattr__(name: str):
    # build_scripts/bench_app.py still imports make_app from here; it lives in app.application
    if name == "make_app":
        from app.application import make_app

        return make_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
