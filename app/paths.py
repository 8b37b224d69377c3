"""File names built from strings the user or a model file controls (a model's name, a condition
label): :func:`safe_filename` keeps them to one harmless path component, and :func:`path_inside`
checks that the final path really lies in the folder it was meant for."""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_NAME = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
# names Windows refuses for a file, whatever the extension
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
             *(f"LPT{i}" for i in range(1, 10))}


def safe_filename(name, *, max_len: int = MAX_NAME, default: str = "model") -> str:
    """One path component made from ``name``: letters, digits and ``-_.+`` are kept, anything
    else (``/``, ``\\``, spaces, ``<``, control characters, non-ASCII) becomes ``_``; leading
    dots (hidden files, ``..``) and trailing dots are dropped; at most ``max_len`` characters;
    never empty, never a name Windows reserves."""
    s = _UNSAFE.sub("_", str(name if name is not None else ""))
    s = s.lstrip(".")[:max_len].rstrip(". ")
    if not s.strip("_"):
        s = default
    if s.split(".")[0].upper() in _RESERVED:
        s = "_" + s
    return s


def path_inside(folder: str | os.PathLike, filename: str) -> Path:
    """``folder / filename``, checked to resolve to a location inside ``folder`` (links in
    ``folder`` itself are followed on both sides). Raises ValueError otherwise."""
    base = Path(folder)
    path = base / filename
    root, real = base.resolve(), path.resolve()
    if real == root or root not in real.parents:
        raise ValueError(f"{filename!r} would be written outside {base}")
    return path
