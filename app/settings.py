"""Where the app keeps its settings and its log file, and the recent-files list.

``PERTURB_STUDIO_CONFIG_DIR`` overrides the folder (tests point it at a temporary folder).
Settings are an INI file read with :class:`QSettings`, so they survive between runs.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

MAX_RECENT = 10
_log_handler: logging.Handler | None = None


def config_dir() -> Path:
    env = os.environ.get("PERTURB_STUDIO_CONFIG_DIR")
    if env:
        p = Path(env)
    else:
        base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
        p = Path(base or Path.home() / ".config") / "perturb-studio"
    p.mkdir(parents=True, exist_ok=True)
    return p


def log_path() -> Path:
    return config_dir() / "perturb-studio.log"


def settings() -> QSettings:
    return QSettings(str(config_dir() / "settings.ini"), QSettings.Format.IniFormat)


def setup_logging() -> Path:
    """Send the ``app`` and ``engine`` loggers to a rotating log file; return its path."""
    global _log_handler
    path = log_path()
    root = logging.getLogger()
    if _log_handler is not None:
        root.removeHandler(_log_handler)
        _log_handler.close()
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _log_handler = handler
    return path


def recent_files() -> list[str]:
    v = settings().value("recent_files", [])
    if isinstance(v, str):
        v = [v]
    return [str(x) for x in (v or []) if x]


def add_recent_file(path: str) -> list[str]:
    path = str(Path(path).resolve())
    files = [f for f in recent_files() if f != path]
    files.insert(0, path)
    files = files[:MAX_RECENT]
    s = settings()
    s.setValue("recent_files", files)
    s.sync()
    return files


def get(key: str, default=None):
    return settings().value(key, default)


def put(key: str, value) -> None:
    s = settings()
    s.setValue(key, value)
    s.sync()


def output_dir() -> Path:
    v = get("output_dir")
    if v and Path(str(v)).is_dir():
        return Path(str(v))
    docs = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(docs or Path.home())


def save_dir() -> Path:
    """Where Save dialogs open: the folder of the last file saved, else the output folder."""
    v = get("last_save_dir")
    if v and Path(str(v)).is_dir():
        return Path(str(v))
    return output_dir()
