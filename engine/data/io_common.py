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


def _cgroup_room() -> int | None:
    """Room left under a cgroup v2 / v1 memory limit, or None without one."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as f:
                raw = f.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            with open(usage_f) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:                      # v1 "no limit"
            return None
        return max(limit - usage, 0)
    return None


def _windows_available() -> int | None:
    try:
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong),
                        ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong),
                        ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

        st = _Status()
        st.dwLength = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)):  # type: ignore[attr-defined]
            return int(st.ullAvailPhys)
    except (AttributeError, OSError, ImportError):
        pass
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
            avail = _windows_available()
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
