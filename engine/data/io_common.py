"""Helpers shared by the data readers: short error texts, text opening, and memory limits."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, ResourceError

if TYPE_CHECKING:
    import pandas as pd


#: deflate cannot compress better than about 1032:1; a dataset or a .gz file that claims to
#: expand more than this (plus a little slack) is corrupt or hostile.
MAX_DEFLATE_RATIO = 1100


def short(e: BaseException, limit: int = 200) -> str:
    """One line of an exception's text, at most ``limit`` characters."""
    s = str(e).strip().replace("\n", " ") or type(e).__name__
    return s if len(s) <= limit else s[:limit] + "..."


def open_text(path: Path):
    """Open a (possibly gzipped) text file as UTF-8, keeping line ends as they are."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), None if unlimited."""
    limit = _read_int("/sys/fs/cgroup/memory.max")
    if limit is not None:
        used = _read_int("/sys/fs/cgroup/memory.current") or 0
        return max(limit - used, 0)
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is not None and limit < 1 << 60:
        used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        return max(limit - used, 0)
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still use, or None when that cannot be told.

    ``MemAvailable`` from ``/proc/meminfo`` (or free physical pages from ``os.sysconf``),
    lowered to what a cgroup memory limit leaves."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def check_memory(path: Path, need: float, what: str) -> None:
    """Raise :class:`ResourceError` when ``need`` bytes exceed the memory available."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise ResourceError(
            f"{path}: reading {what} needs about {fmt_bytes(need)} of memory, but only "
            f"{fmt_bytes(avail)} is available; close other programs, use a machine with more "
            "memory, or subset the file")


def check_unique_cells(names: pd.Index, path: Path) -> None:
    """Raise :class:`DataError` when cell names repeat."""
    if names.has_duplicates:
        dup = names[names.duplicated()]
        raise DataError(f"{path}: cell names must be unique, but {len(set(dup))} are repeated "
                        f"(e.g. {dup[0]!r})")
