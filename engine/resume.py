"""Resumable training checkpoints: ``checkpoint.safetensors`` + ``checkpoint.json``, no pickle.

A long run writes, every ``every`` seconds and when it is cancelled, the state it needs to go on
into a folder beside the model folder (``<out>.partial/``): weights of the autoencoder and of the
flow network (and its moving average, and the moving averages of finished ensemble members),
the optimiser's state tensors, the random generators' states (as uint8 tensors), the step and
phase (JSON). ``--resume`` reads it back (:meth:`Checkpointer.load`) and training continues
from that step; the folder is removed once the model is written. Both files are written to a
temporary name and renamed; the JSON, renamed last, records the size of the tensor file, so a
crash between the two renames is detected and the older checkpoint is not mixed with the newer
one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .errors import ModelError

TENSORS, META = "checkpoint.safetensors", "checkpoint.json"
FORMAT = "perturb-studio-train-checkpoint"


def optimizer_state(opt, prefix: str) -> tuple[dict, dict]:
    """An optimiser's state as tensors ``{prefix.state.i.name: tensor}`` and JSON (groups)."""
    import torch

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(opt, prefix: str, tensors: dict, meta: dict) -> None:
    state: dict = {}
    head = f"{prefix}.state."
    for name, t in tensors.items():
        if name.startswith(head):
            i, k = name[len(head):].split(".", 1)
            state.setdefault(int(i), {})[k] = t
    for key, v in meta.get("scalars", {}).items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def module_tensors(module, prefix: str) -> dict:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous()
            for k, v in module.state_dict().items()}


def load_module(module, prefix: str, tensors: dict) -> None:
    head = prefix + "."
    sd = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    module.load_state_dict(sd)


class Checkpointer:
    """Writes and reads the training checkpoint in ``folder`` (None: never writes).

    ``every`` seconds between checkpoints (0: at every chance, for tests); only the main rank
    writes (``main``)."""

    def __init__(self, folder: str | os.PathLike | None, *, every: float = 300.0,
                 main: bool = True) -> None:
        self.folder = None if folder is None else Path(folder)
        self.every, self.main = float(every), main
        self.last = time.monotonic()
        self.saved_step: tuple[str, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def due(self) -> bool:
        return self.enabled and time.monotonic() - self.last >= self.every

    def save(self, meta: dict, tensors: dict) -> None:
        """Write the checkpoint (main rank only) and restart the clock."""
        self.last = time.monotonic()
        if not self.enabled or not self.main:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        t_tmp = self.folder / (TENSORS + ".tmp")
        save_file(tensors, str(t_tmp))
        size = t_tmp.stat().st_size
        os.replace(t_tmp, self.folder / TENSORS)
        m_tmp = self.folder / (META + ".tmp")
        m_tmp.write_text(json.dumps({"format": FORMAT, "tensors_bytes": size, **meta}))
        os.replace(m_tmp, self.folder / META)
        self.saved_step = (meta.get("phase", ""), int(meta.get("step", 0)))

    def load(self) -> tuple[dict, dict] | None:
        """(meta, tensors) of the checkpoint, or None when the folder holds none."""
        if not self.enabled:
            return None
        mp, tp = self.folder / META, self.folder / TENSORS
        if not mp.is_file() or not tp.is_file():
            return None
        from safetensors.torch import load_file

        try:
            meta = json.loads(mp.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"{mp}: not a readable checkpoint ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError(f"{mp} is not a Perturb Studio training checkpoint")
        if meta.get("tensors_bytes") != tp.stat().st_size:
            raise ModelError(f"{tp} does not match {mp.name} (a crash between the two writes?); "
                             f"delete {self.folder} to start again")
        return meta, load_file(str(tp))

    def remove(self) -> None:
        if self.enabled and self.main and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


def partial_folder(out_dir: str | os.PathLike) -> Path:
    """Where a run writing ``out_dir`` keeps its checkpoint: ``<out_dir>.partial``."""
    p = Path(out_dir)
    return p.with_name(p.name + ".partial")


__all__ = ["Checkpointer", "load_module", "load_optimizer_state", "module_tensors",
           "optimizer_state", "partial_folder"]
