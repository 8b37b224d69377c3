"""Model folders: ``config.json`` + ``model.safetensors`` + ``card.json`` (+ ``CARD.md``).

Loading validates the config and every tensor name and shape before any weight is used, and fails
with a :class:`ModelError` that names the folder and the problem. Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .config import FORMAT, MAX_NESTING, parameter_count, upgrade_v1, validate_config
from .config import FORMAT_VERSION as FORMAT_VERSION  # noqa: F401 - re-exported (engine.train)
from .errors import ModelError, ResourceError

CONFIG, WEIGHTS, CARD, CARD_MD = "config.json", "model.safetensors", "card.json", "CARD.md"
REFERENCE = "reference.safetensors"   # real training cells + group means (engine.reference)
MODEL_FILES = (CONFIG, WEIGHTS, CARD, CARD_MD, REFERENCE)   # all a model folder is made of
MAX_REFERENCE_BYTES = 256 << 20       # reference.safetensors (shipped: < 2 MB)
MAX_CONFIG_BYTES = 16 << 20        # a config.json larger than this is refused (shipped: 62 KB)
MAX_CARD_BYTES = 16 << 20          # card.json / CARD.md (shipped: < 160 KB)
MAX_HEADER_BYTES = 100 << 20       # safetensors' own limit on the JSON header
WEIGHT_DTYPES = ("F32",)           # the engine computes in float32; nothing else is converted
_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F64": "float64", "F32": "float32",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool"}


def _read_json(path: Path, limit: int, *, what: str, lenient: bool = False):
    """Parse a JSON file of at most ``limit`` bytes. ``lenient``: bytes that are not UTF-8
    become U+FFFD (a card written in latin-1 stays readable); otherwise they are refused."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise ModelError(f"{path} is {size / 2**20:.1f} MiB; a model's {what} is at "
                                 f"most {limit / 2**20:.0f} MiB, so it was not read")
            raw = f.read(limit + 1)
    except OSError as e:
        raise ModelError(f"cannot read {path} ({e.strerror or e})") from None
    if len(raw) > limit:
        raise ModelError(f"{path} is larger than {limit / 2**20:.0f} MiB; it was not read")
    try:
        text = raw.decode("utf-8-sig", errors="replace" if lenient else "strict")
    except UnicodeDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: it is not UTF-8 text (byte "
                         f"0x{raw[e.start]:02x} at position {e.start}); save it as UTF-8") \
            from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ModelError(f"{path} is not valid JSON for a model: it is nested too deeply "
                         f"(at most {MAX_NESTING} levels are allowed)") from None
    except ValueError as e:                  # JSONDecodeError, or a number of > 4300 digits
        raise ModelError(f"{path} is not valid JSON: {str(e)[:200]}") from None


def read_config(folder: str | os.PathLike) -> dict:
    """Read and fully validate ``config.json`` (:func:`engine.config.validate_config`) of a
    model folder; when the weights file is there, check that it is large enough for the
    architecture the config describes. Nothing is built or allocated. A v1 config is returned
    in the v2 layout (:func:`engine.config.upgrade_v1`); the folder is not rewritten."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    path = folder / CONFIG
    if not path.is_file():
        raise ModelError(f"{folder} is not a Perturb Studio model: {CONFIG} is missing")
    config = validate_config(_read_json(path, MAX_CONFIG_BYTES, what=CONFIG), where=str(path))
    weights = folder / WEIGHTS
    try:
        size = weights.stat().st_size if weights.is_file() else None
    except OSError:
        size = None
    if size is not None:
        n = parameter_count(config)
        if size < 4 * n:
            raise ModelError(f"{weights} holds {size:,} bytes, but the architecture in "
                             f"{CONFIG} has {n:,} parameters ({4 * n:,} bytes of float32 "
                             "weights): the config and the weights do not belong together")
    return upgrade_v1(config)     # a v1 folder reads as the v2 layout (engine.config.upgrade_v1)


def read_card(folder: str | os.PathLike) -> dict:
    """``card.json`` as a dict ({} when there is none). Text that is not UTF-8 is read with
    replacement characters; a card that is not a JSON object is refused (ModelError)."""
    path = Path(folder) / CARD
    if not path.is_file():
        return {}
    card = _read_json(path, MAX_CARD_BYTES, what=CARD, lenient=True)
    if not isinstance(card, dict):
        raise ModelError(f"{path} must hold a JSON object (the model card), not "
                         f"{type(card).__name__}")
    stack = [(card, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ModelError(f"{path} is nested more than {MAX_NESTING} levels deep")
        children = obj.values() if isinstance(obj, dict) else obj
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return card


def _corrupt(path: Path, why: str) -> ModelError:
    return ModelError(f"{path} is not a readable safetensors file ({why}); it may be truncated "
                      "or corrupt")


def read_weights_header(path: Path) -> tuple[dict, int, int]:
    """The tensors a safetensors file declares, checked against its size before any tensor
    is read: ``({name: (dtype, shape, (begin, end))}, data start, file size)``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise _corrupt(path, f"only {size} bytes")
            n = int.from_bytes(f.read(8), "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise _corrupt(path, f"its header claims {n:,} bytes, the file holds {size:,}")
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"cannot read {path} ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _corrupt(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    tensors, data, used = {}, size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (isinstance(dtype, str) and isinstance(shape, list) and len(shape) <= 8
                  and all(type(d) is int and d >= 0 for d in shape)
                  and type(begin) is int and type(end) is int and 0 <= begin <= end <= data)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _corrupt(path, f"the entry of tensor {name} is malformed or lies beyond the "
                           "end of the file")
        tensors[name] = (dtype, tuple(shape), (begin, end))
        used += end - begin
    if used != data:
        raise _corrupt(path, f"its tensors cover {used:,} of the {data:,} data bytes")
    return tensors, 8 + n, size


def load_weights(folder: Path, expected: dict) -> dict:
    """Load tensors and check them against ``expected`` (name -> shape) of the built model.

    The header is checked first, without reading any tensor: every name, dtype (float32 only),
    shape and byte range. Then the tensors are read and checked for NaN / infinite values."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ModelError(f"{folder}: {WEIGHTS} is missing")
    tensors, _, _ = read_weights_header(path)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelError(f"{path} does not match its config.json: missing tensors "
                         f"{missing[:5]}, unexpected tensors {extra[:5]}")
    for name, shape in expected.items():
        dtype, got, (begin, end) = tensors[name]
        if dtype not in WEIGHT_DTYPES:
            raise ModelError(f"{path}: tensor {name} is stored as {_DTYPE_NAMES.get(dtype, dtype)}"
                             f"; Perturb Studio weights must be float32 (F32). Convert the "
                             "model with the engine that made it, or retrain it")
        if got != tuple(shape):
            raise ModelError(f"{path}: tensor {name} has shape {got}, the "
                             f"config implies {tuple(shape)} (gene list or architecture differ)")
        if end - begin != 4 * math.prod(got):
            raise _corrupt(path, f"tensor {name} declares {end - begin:,} bytes for shape {got}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, str(e)[:200]) from None
    for name, t in state.items():
        if t.dtype != torch.float32 or tuple(t.shape) != tuple(expected[name]):
            raise _corrupt(path, f"tensor {name} changed while it was read")
        if not torch.isfinite(t).all():
            raise ModelError(f"{path}: tensor {name} holds NaN or infinite values; the model "
                             "is damaged (or its training diverged) and cannot be used")
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
                card_md: str | None = None, *, overwrite: bool = False,
                extra: dict[str, bytes] | None = None) -> Path:
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
    extra = dict(extra or {})
    if set(extra) - {REFERENCE}:
        raise ValueError(f"unknown model files {sorted(set(extra) - {REFERENCE})}")
    need = _state_bytes(state) + sum(len(t.encode("utf-8")) for t in texts.values()) + (1 << 20)
    need += sum(len(b) for b in extra.values())
    try:
        free = shutil.disk_usage(folder.parent).free
    except OSError:
        free = None
    if free is not None and need > free:
        raise ResourceError(f"{folder}: the model needs {need / 2**20:.1f} MiB but only "
                            f"{free / 2**20:.1f} MiB is free on that disk; nothing was written")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)                # mkdtemp makes 0700; a model is shareable
    except OSError as e:
        raise ModelError(f"{folder}: cannot write in {folder.parent} ({e.strerror or e})") \
            from None
    old = None
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  str(tmp / WEIGHTS), metadata={"format": FORMAT})
        os.chmod(tmp / WEIGHTS, 0o666 & ~mask)
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name, data in extra.items():
            (tmp / name).write_bytes(data)
            os.chmod(tmp / name, 0o666 & ~mask)
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
