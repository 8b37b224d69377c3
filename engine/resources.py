"""Where the files that ship with Perturb Studio live: ``resources/<name>`` beside the packages,
or inside a frozen (PyInstaller) build, unless an environment variable points elsewhere."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def resource_dir(name: str, env: str) -> Path:
    """``$env`` if set, else ``resources/<name>`` (in ``sys._MEIPASS`` when frozen)."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        return Path(sys._MEIPASS) / "resources" / name
    return Path(__file__).resolve().parents[1] / "resources" / name


__all__ = ["resource_dir"]
