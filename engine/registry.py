"""Where models live: shipped with the app, and the user's own.

- shipped: ``<repo>/resources/models`` from source, ``<bundle>/resources/models`` when frozen
  (PyInstaller's ``sys._MEIPASS``); ``PERTURB_STUDIO_SHIPPED_MODELS`` overrides.
- user: ``PERTURB_STUDIO_USER_MODELS``, else the platform's per-user data folder.

This module is a leaf of the model side: it reads config and card files only and imports neither
:mod:`engine.model` nor :mod:`engine.install` (an import-linter contract keeps it so). Installing
a model folder is :func:`engine.install.import_model` (public as ``engine.import_model``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import WEIGHTS, read_card, read_config
from .conditions.spec import ConditionSpace
from .errors import ModelError, PerturbStudioError
from .resources import resource_dir


def shipped_models_dir() -> Path:
    return resource_dir("models", "PERTURB_STUDIO_SHIPPED_MODELS")


def user_models_dir() -> Path:
    env = os.environ.get("PERTURB_STUDIO_USER_MODELS")
    if env:
        return Path(env)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "perturb-studio" / "models"


@dataclass
class ModelInfo:
    name: str
    path: Path
    source: str                      # "shipped" | "user"
    card: dict = field(default_factory=dict)
    space: ConditionSpace = field(default_factory=ConditionSpace)
    n_genes: int = 0
    backbone: str = ""
    members: int = 1                 # ensemble members (engine.effects)
    reference_cells: int = 0         # real training cells stored with it (engine.reference)
    anchor: tuple[str, ...] = ()     # how never-measured conditions start (engine.anchor)


def _info(folder: Path, source: str) -> ModelInfo:
    from .anchor import anchor_lines
    from .config import ensemble_members
    from .reference import reference_cell_count

    config = read_config(folder)                     # validated completely (engine.config)
    if not (folder / WEIGHTS).is_file():
        raise ModelError(f"{folder}: {WEIGHTS} is missing")
    return ModelInfo(config.get("name") or folder.name, folder, source, read_card(folder),
                     ConditionSpace.from_dict(config["space"]), len(config["genes"]),
                     config["architecture"].get("backbone", ""), ensemble_members(config),
                     reference_cell_count(folder), tuple(anchor_lines(config)))


def _reason(e: BaseException) -> str:
    """One line saying why a folder is not a usable model."""
    if isinstance(e, PerturbStudioError):
        text = str(e)
    elif isinstance(e, OSError):
        text = f"cannot be read ({e.strerror or e})"
    else:                                            # a defect of ours, still only one line
        text = f"unexpected {type(e).__name__} while reading it: {e}"
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _scan() -> tuple[list[ModelInfo], list[tuple[Path, str]]]:
    good: list[ModelInfo] = []
    broken: list[tuple[Path, str]] = []
    for source, root in (("shipped", shipped_models_dir()), ("user", user_models_dir())):
        try:
            if not root.is_dir():
                continue
            folders = sorted(p for p in root.iterdir() if not p.name.startswith(".")
                             and p.is_dir())
        except OSError as e:
            broken.append((root, _reason(e)))
            continue
        for folder in folders:
            try:
                good.append(_info(folder, source))
            except Exception as e:  # noqa: BLE001 - one broken folder must not hide the rest
                broken.append((folder, _reason(e)))
    return good, broken


def list_models(*, include_broken: bool = False) -> list[ModelInfo]:
    """Installed models (shipped first, then the user's), read from config/card only: cheap.

    A folder that is not a usable model (any error at all while reading it) is skipped; see
    :func:`broken_models` for which and why. With ``include_broken`` the first such folder
    raises :class:`ModelError` instead."""
    good, broken = _scan()
    if include_broken and broken:
        folder, why = broken[0]
        raise ModelError(f"{folder}: {why}" if str(folder) not in why else why)
    return good


def broken_models() -> list[tuple[Path, str]]:
    """The folders :func:`list_models` skipped, each with a one-line reason."""
    return _scan()[1]


def resolve_model(name_or_dir: str | os.PathLike) -> Path:
    """A folder path, or the name of an installed model (user models shadow shipped ones)."""
    p = Path(name_or_dir).expanduser()
    if p.is_dir():
        return p
    for root in (user_models_dir(), shipped_models_dir()):
        if (root / str(name_or_dir)).is_dir():
            return root / str(name_or_dir)
    names = [m.name for m in list_models()]
    raise ModelError(f"no model named {str(name_or_dir)!r} and no such folder; installed models: "
                     f"{', '.join(names) or 'none'}")

