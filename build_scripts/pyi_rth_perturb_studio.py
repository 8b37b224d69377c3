"""PyInstaller runtime hook: runs inside the frozen program before any of our code.

The bundle may live in a read-only folder (/opt/perturb-studio, C:\\Program Files, a signed .app),
so everything that wants to write a cache next to its own files is pointed at a per-user cache
folder instead, with the system temp folder as a fallback. Values already set by the user win.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _user_cache_root() -> str:
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "PerturbStudio", "Cache")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "PerturbStudio")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "perturb-studio")


def _writable_dir(*candidates: str) -> str:
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
            probe.close()
            return path
        except OSError:
            continue
    return tempfile.mkdtemp(prefix="perturb-studio-")


def _setup() -> None:
    user = ""
    try:
        import getpass

        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (containers); the temp fallback still works
        pass
    tmp_root = os.path.join(tempfile.gettempdir(), f"perturb-studio-{user or 'user'}")
    cache_root = _user_cache_root()
    # numba (used by scanpy, umap-learn and pynndescent) compiles with cache=True and wants to
    # write its cache next to the module sources inside the bundle.
    if not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = _writable_dir(
            os.path.join(cache_root, "numba"), os.path.join(tmp_root, "numba"))
    # Packages shipped as .py files (scanpy, umap, pynndescent: see the spec) are compiled at
    # import; keep their bytecode in the cache instead of recompiling at every launch.
    # (The bootloader turns bytecode writing off; with a prefix nothing lands in the bundle.)
    if sys.pycache_prefix is None:
        sys.pycache_prefix = _writable_dir(
            os.path.join(cache_root, "pycache"), os.path.join(tmp_root, "pycache"))
        sys.dont_write_bytecode = False
    # matplotlib (imported by scanpy) builds a font cache in its config folder.
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = _writable_dir(
            os.path.join(cache_root, "matplotlib"), os.path.join(tmp_root, "matplotlib"))
    # A windowed build (Windows PerturbStudio.exe, the macOS .app started from Finder) has no
    # console: sys.stdout/stderr are None and any print() or tqdm bar would raise.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115


_setup()
del _setup
