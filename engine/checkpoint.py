"""Model folders: ``config.json`` + ``model.safetensors`` + ``card.json`` (+ ``CARD.md``).

Loading validates the config and every tensor name and shape before any weight is used, and fails
with a :class:`ModelError` that names the folder and the problem. Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelError, ResourceError

FORMAT = "perturb-studio-model"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, CARD, CARD_MD = "config.json", "model.safetensors", "card.json", "CARD.md"
MAX_CONFIG_BYTES = 64 << 20        # a config.json larger than this is refused
REQUIRED_KEYS = ("format", "format_version", "genes", "architecture", "vocab", "space",
                 "latent_stats")


def read_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    path = folder / CONFIG
    if not path.is_file():
        raise ModelError(f"{folder} is not a Perturb Studio model: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"{path} is not a Perturb Studio model config (format != {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelError(f"{path} lacks required entries: {', '.join(missing)}")
    if int(config["format_version"]) > FORMAT_VERSION:
        raise ModelError(f"{folder} was saved by a newer Perturb Studio (model format "
                         f"{config['format_version']}, this version reads up to {FORMAT_VERSION})"
                         "; please update the app")
    genes = config["genes"]
    if not isinstance(genes, list) or not genes or len(set(genes)) != len(genes):
        raise ModelError(f"{path}: the gene list is empty or has duplicates")
    return config


def read_card(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CARD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


def load_weights(folder: Path, expected: dict) -> dict:
    """Load tensors and check them against ``expected`` (name -> shape) of the built model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ModelError(f"{folder}: {WEIGHTS} is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e}); it may be truncated "
                         "or corrupt") from None
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelError(f"{path} does not match its config.json: missing tensors "
                         f"{missing[:5]}, unexpected tensors {extra[:5]}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ModelError(f"{path}: tensor {name} has shape {tuple(state[name].shape)}, the "
                             f"config implies {tuple(shape)} (gene list or architecture differ)")
    return state


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_model_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a real (not symlinked) folder whose ``config.json`` says it is a
    Perturb Studio model. Only such a folder may ever be replaced by :func:`save_folder`."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    path = folder / CONFIG
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            config = json.loads(f.read(MAX_CONFIG_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def check_destination(folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check, before any work, that a model may be written to ``folder``; return it absolute.

    A model folder is created where nothing exists yet (its parent folders too), or replaces an
    empty folder. An existing Perturb Studio model folder is replaced only with ``overwrite``.
    Anything else (a file, a link, a folder holding other files, the current folder or one of
    its parents) is refused: nothing that is not a model is ever deleted or moved.

    Raises
    ------
    ModelError
        The destination is not safe to write, naming it and what is there.
    """
    raw = Path(folder).expanduser()
    if str(raw).strip() in ("", "."):
        raise ModelError("the model folder must be a new folder name, not the current folder")
    dest = Path(os.path.abspath(raw))
    cwd = Path(os.path.abspath(os.getcwd()))
    if dest == cwd or dest in cwd.parents or dest.parent == dest:
        raise ModelError(f"{folder}: refusing to write a model over the current folder or one "
                         "of its parents; give a new folder name, e.g. models/my-model")
    if raw.is_symlink() or dest.is_symlink():
        raise ModelError(f"{folder} is a link; give a new folder name (links are never replaced)")
    if dest.exists():
        if not dest.is_dir():
            raise ModelError(f"{folder} exists and is not a folder; it was left untouched. Give "
                             "a new folder name for the model")
        if is_model_folder(dest):
            if not overwrite:
                raise ModelError(f"{folder} already holds a Perturb Studio model; pass "
                                 "--overwrite to replace it, or give a new folder name")
        else:
            try:
                entries = sorted(p.name for p in dest.iterdir())
            except OSError as e:
                raise ModelError(f"{folder}: cannot read this folder ({e.strerror or e})") \
                    from None
            if entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise ModelError(f"{folder} already exists and holds files that are not a "
                                 f"Perturb Studio model ({len(entries)} entries: {shown}); they "
                                 "were left untouched. Give a new folder name for the model")
    parent = dest.parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise ModelError(f"{folder}: {p} is a file, so no folder can be made inside it")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ModelError(f"{folder}: no permission to write in {p}")
            break
    return dest


def _state_bytes(state: dict) -> int:
    return int(sum(v.numel() * v.element_size() for v in state.values()))


def save_folder(folder: str | os.PathLike, config: dict, state: dict, card: dict,
                card_md: str | None = None, *, overwrite: bool = False) -> Path:
    """Write the whole folder atomically: build it next to the target, then rename into place.

    The destination is checked first with :func:`check_destination`: only a missing or empty
    folder, or (with ``overwrite``) an existing Perturb Studio model folder, is ever replaced.
    Free disk space is checked before writing; a failed write (disk full, permissions) raises one
    :class:`ResourceError` / :class:`ModelError` and leaves nothing behind.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    folder = check_destination(folder, overwrite=overwrite)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"{folder}: cannot create the folder {folder.parent} "
                         f"({e.strerror or e})") from None
    texts = {CONFIG: json.dumps(config, indent=1), CARD: json.dumps(card, indent=1)}
    if card_md:
        texts[CARD_MD] = card_md
    need = _state_bytes(state) + sum(len(t.encode("utf-8")) for t in texts.values()) + (1 << 20)
    try:
        free = shutil.disk_usage(folder.parent).free
    except OSError:
        free = None
    if free is not None and need > free:
        raise ResourceError(f"{folder}: the model needs {need / 2**20:.1f} MiB but only "
                            f"{free / 2**20:.1f} MiB is free on that disk; nothing was written")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as e:
        raise ModelError(f"{folder}: cannot write in {folder.parent} ({e.strerror or e})") \
            from None
    old = None
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  str(tmp / WEIGHTS), metadata={"format": FORMAT})
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        folder = check_destination(folder, overwrite=overwrite)   # nothing changed meanwhile
        if folder.exists():
            if is_model_folder(folder):
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old",
                                            dir=folder.parent))
                os.rmdir(old)
                folder.rename(old)
            else:                                   # an empty folder (checked above)
                folder.rmdir()
        tmp.rename(folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            old.rename(folder)                      # put the previous model back
            old = None
        if isinstance(e, SafetensorError | OSError):
            if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space" in str(e):
                raise ResourceError(f"{folder}: the disk is full; the model was not saved "
                                    "and nothing was left behind") from None
            raise ModelError(f"{folder}: cannot write the model ({e}); nothing was left "
                             "behind") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def write_card(folder: str | os.PathLike, card: dict, card_md: str | None = None) -> None:
    """Replace card.json (and CARD.md) atomically."""
    folder = Path(folder)
    for name, text in ((CARD, json.dumps(card, indent=1)), (CARD_MD, card_md)):
        if text is None:
            continue
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
