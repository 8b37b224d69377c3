"""Model folders: ``config.json`` + ``model.safetensors`` + ``card.json`` (+ ``CARD.md``).

Loading validates the config and every tensor name and shape before any weight is used, and fails
with a :class:`ModelError` that names the folder and the problem. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelError

FORMAT = "perturb-studio-model"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, CARD, CARD_MD = "config.json", "model.safetensors", "card.json", "CARD.md"
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


def save_folder(folder: str | os.PathLike, config: dict, state: dict, card: dict,
                card_md: str | None = None) -> Path:
    """Write the whole folder atomically: build it next to the target, then rename into place."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config, indent=1), encoding="utf-8")
        (tmp / CARD).write_text(json.dumps(card, indent=1), encoding="utf-8")
        if card_md:
            (tmp / CARD_MD).write_text(card_md, encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
