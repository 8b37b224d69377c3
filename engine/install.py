"""Installing a model folder into the user's model folder (``engine.import_model``).

A model folder may come from anywhere (a download, a colleague, a USB stick), so nothing in it is
trusted: only the known model files are copied (``config.json``, ``model.safetensors``,
``card.json``, ``CARD.md``), each only when it is a regular file within its size limit; a link
anywhere among the folder's entries is refused by name, so no file outside the folder is ever
read; the model's name must be a plain file name; the copy is validated completely (exactly the
bytes that will be installed) and then moved into place in one rename, so an import either
installs the whole model or leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from .checkpoint import (
    CARD,
    CARD_MD,
    CONFIG,
    MAX_CARD_BYTES,
    MAX_CONFIG_BYTES,
    MAX_REFERENCE_BYTES,
    MODEL_FILES,
    REFERENCE,
    WEIGHTS,
)
from .errors import ModelError, ResourceError
from .registry import ModelInfo, _info, user_models_dir

MAX_WEIGHTS_BYTES = 2 << 30        # 2 GiB; the parameter budget (engine.config) allows 800 MB
MAX_ENTRIES = 10_000               # entries of the source folder that are looked at
MAX_NAME_LENGTH = 100
LIMITS = {CONFIG: MAX_CONFIG_BYTES, WEIGHTS: MAX_WEIGHTS_BYTES, CARD: MAX_CARD_BYTES,
          CARD_MD: MAX_CARD_BYTES, REFERENCE: MAX_REFERENCE_BYTES}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
             *(f"LPT{i}" for i in range(1, 10))}       # Windows device names


def check_model_name(name: str) -> str:
    """Return ``name`` when it is safe as a folder name in the user model folder; otherwise
    raise :class:`ModelError` saying why. Allowed: letters, digits and ``- _ . +``, starting with
    a letter or digit, at most 100 characters (so no path separators, no ``..``, no hidden
    names)."""
    if not isinstance(name, str) or not name:
        raise ModelError("a model name must not be empty")
    shown = name if len(name) <= 60 else name[:57] + "..."
    if len(name) > MAX_NAME_LENGTH:
        raise ModelError(f"model name {shown!r} is {len(name)} characters long; at most "
                         f"{MAX_NAME_LENGTH} are allowed")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ModelError(f"model name {shown!r} must be a plain name, not a path (no '/', '\\' "
                         "or '..'); it is the folder the model is installed as")
    if not _NAME.fullmatch(name):
        bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "_.+-"))), None)
        reason = (f"holds {bad!r}" if bad is not None else "starts with "
                  f"{name[0]!r}; it must start with a letter or a digit")
        raise ModelError(f"model name {shown!r} {reason}; use only letters, digits and - _ . +")
    if name.endswith(".") or name.split(".")[0].upper() in _RESERVED:
        raise ModelError(f"model name {shown!r} is not a valid folder name on every system "
                         "(it ends in '.' or is a reserved device name); choose another")
    return name


def _name_from_folder(src: Path) -> str:
    """The folder's own name made safe: disallowed characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", src.name).strip("-._+")
    if not name:
        raise ModelError(f"cannot make a model name from the folder name {src.name!r}; give "
                         "a name (letters, digits and - _ . +)")
    return check_model_name(name[:MAX_NAME_LENGTH].rstrip("."))


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "not a regular file"


def _scan(src: Path) -> dict[str, os.stat_result]:
    """lstat of the model files in ``src``; refuse links and non-regular model files."""
    found: dict[str, os.stat_result] = {}
    try:
        with os.scandir(src) as it:
            for i, entry in enumerate(it):
                if i >= MAX_ENTRIES:
                    raise ModelError(f"{src} holds more than {MAX_ENTRIES:,} entries; a model "
                                     f"folder holds {', '.join(MODEL_FILES)}")
                if entry.is_symlink():
                    raise ModelError(f"{src} contains a link, {entry.name!r}; links are never "
                                     "followed when importing a model (it could point at any "
                                     "file). Replace it with the file itself")
                if entry.name in LIMITS:
                    st = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise ModelError(f"{src / entry.name} is {_kind(st.st_mode)}, not a "
                                         "regular file; it cannot be imported")
                    if st.st_size > LIMITS[entry.name]:
                        raise ModelError(f"{src / entry.name} is {st.st_size / 2**20:,.1f} MiB; "
                                         f"at most {LIMITS[entry.name] / 2**20:,.0f} MiB is "
                                         "allowed for this file")
                    found[entry.name] = st
    except OSError as e:
        raise ModelError(f"cannot read the folder {src} ({e.strerror or e})") from None
    for required in (CONFIG, WEIGHTS):
        if required not in found:
            raise ModelError(f"{src} is not a Perturb Studio model: {required} is missing")
    return found


def _copy(src: Path, dest: Path, st: os.stat_result, limit: int) -> None:
    """Copy one regular file without following links, refusing it if it changed since ``st``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_BINARY", 0)
    fd = os.open(src, flags)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise ModelError(f"{src} was replaced while it was imported; try again")
        with open(fd, "rb", closefd=False) as fin, open(dest, "xb") as fout:
            left = limit + 1
            while left > 0:
                chunk = fin.read(min(1 << 20, left))
                if not chunk:
                    break
                fout.write(chunk)
                left -= len(chunk)
            if left <= 0:
                raise ModelError(f"{src} grew beyond {limit / 2**20:,.0f} MiB while it was "
                                 "imported; it was not installed")
            fout.flush()
            os.fsync(fout.fileno())
    finally:
        os.close(fd)


def import_model(folder: str | os.PathLike, *, name: str | None = None) -> ModelInfo:
    """Validate a model folder completely and install a copy in :func:`user_models_dir`.

    Only the model files are copied, as regular files within their size limits (weights at most
    2 GiB, config / card 16 MiB); a folder with a link among its entries, or a model file that is
    a pipe, device or folder, is refused by name. ``name`` (default: the folder's name, with
    characters other than letters, digits and ``- _ . +`` turned into ``-``) must be a plain
    folder name. The copy is validated (weights included) and renamed into place.

    Raises
    ------
    ModelError
        The folder is not a valid model, holds a link or a non-regular file, the name is not
        allowed, or a model with that name is installed already.
    ResourceError
        Not enough free disk space for the copy.
    """
    from .model import PerturbModel

    raw = Path(folder).expanduser()
    try:
        src = raw.resolve(strict=True)           # the folder itself may be reached by a link
    except (OSError, RuntimeError):
        raise ModelError(f"model folder not found: {folder}") from None
    if not src.is_dir():
        raise ModelError(f"{folder} is not a folder; choose the model's folder")
    name = check_model_name(name) if name is not None else _name_from_folder(src)
    found = _scan(src)
    root = user_models_dir()
    dest = root / name
    if dest.exists() or dest.is_symlink():
        raise ModelError(f"a model named {name!r} is already installed at {dest}; remove it "
                         "first or give another name")
    try:
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
    except OSError as e:
        raise ModelError(f"cannot write to the user model folder {root} ({e.strerror or e})") \
            from None
    need = sum(st.st_size for st in found.values()) + (1 << 20)
    if need > free:
        raise ResourceError(f"importing {src.name} needs {need / 2**20:,.1f} MiB but only "
                            f"{free / 2**20:,.1f} MiB is free in {root}; nothing was copied")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".importing", dir=root))
    except OSError as e:
        raise ModelError(f"cannot write to the user model folder {root} ({e.strerror or e})") \
            from None
    try:
        for fname, st in found.items():
            _copy(src / fname, tmp / fname, st, LIMITS[fname])
        # exactly the bytes that will be installed, the reference cells included
        _ = PerturbModel.load(tmp, device="cpu").reference
        if dest.exists() or dest.is_symlink():
            raise ModelError(f"a model named {name!r} was installed at {dest} meanwhile")
        os.rename(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            if e.errno == errno.ENOSPC:
                raise ResourceError(f"the disk holding {root} is full; {src.name} was not "
                                    "imported and nothing was left behind") from None
            raise ModelError(f"cannot import {src} ({e.strerror or e}); nothing was "
                             "installed") from None
        if isinstance(e, ModelError) and str(tmp) in str(e):
            raise ModelError(str(e).replace(str(tmp), str(src))) from None
        raise
    return _info(dest, "user")
