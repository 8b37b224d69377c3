"""Sessions on disk and experiments as command lines (no Qt).

A saved session is one folder::

    session.json          manifest (format "perturb-studio-session", version 1)
    exp-001.h5ad          each experiment's cells (counts, provenance), as engine.write_h5ad
    exp-001-source.h5ad   perturb mode: the user's cells that were perturbed

The manifest lists, per experiment, its name, the model's name, path and weights sha256, the
conditions, the settings (cells per condition, seed, steps, guidance), when it was made and its
file; and, once, the open dataset's path and column roles, which experiment was shown and the
view state (tab, colour, genes). Reopened, an experiment whose model is missing or whose
weights changed is read-only: its cells and the views on them come back, but nothing that needs
the model (effects with intervals, Copy as command), and the note says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "perturb-studio-session"
VERSION = 1
MANIFEST = "session.json"
WEIGHTS = "model.safetensors"


# -- provenance ---------------------------------------------------------------------------------
def provenance(adata) -> dict:
    prov = adata.uns.get("perturb_studio", {}) if hasattr(adata, "uns") else {}
    return dict(prov) if hasattr(prov, "keys") else {}


def conditions_of(adata) -> list[dict]:
    """The conditions asked for (``conditions_json`` of the provenance), as dicts."""
    raw = provenance(adata).get("conditions_json")
    try:
        out = json.loads(str(raw)) if raw is not None else []
    except (TypeError, ValueError):
        return []
    return [c for c in out if isinstance(c, dict)]


def settings_of(exp) -> dict:
    """Cells per condition, seed, steps and guidance of an experiment (from its provenance)."""
    prov = provenance(exp.adata)
    sizes = [len(v) for v in exp.groups.values()]
    out = {"n": int(max(sizes)) if sizes else int(exp.adata.n_obs)}
    for k in ("seed", "steps", "guidance"):
        v = prov.get(k)
        if v is not None:
            out[k] = float(v) if k == "guidance" else int(v)
    return out


def weights_sha256(model_dir) -> str:
    h = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- Copy as command ----------------------------------------------------------------------------
def _condition_args(c: dict) -> list[str]:
    args = []
    if c.get("cell_type"):
        args += ["--cell-type", str(c["cell_type"])]
    perts = c.get("perturbations") or []
    if perts:
        args += ["--perturbation", "+".join(str(p["target"]) for p in perts)]
        types = [p.get("type") for p in perts]
        if any(types):
            args += ["--perturbation-type", "+".join(str(t or "") for t in types)]
        doses = [p.get("dose") for p in perts]
        if any(d is not None for d in doses):
            args += ["--dose", "+".join("" if d is None else f"{float(d):g}" for d in doses)]
    ctx = c.get("context") or {}
    if ctx:
        args += ["--context", ",".join(f"{k}={v}" for k, v in ctx.items())]
    return args


def commands(exp, *, out_dir: str = "out", data_path: str | None = None) -> list[str]:
    """The ``perturb-studio generate`` and ``perturb-studio effects`` lines that reproduce the
    experiment: one pair per condition, with the model, seed, steps and guidance it was made
    with (comment lines start with #)."""
    prov = provenance(exp.adata)
    st = settings_of(exp)
    model = str(prov.get("model") or exp.model_name)
    conds = [c for c in conditions_of(exp.adata) if c.get("perturbations")] or \
        conditions_of(exp.adata)
    common = [f"--seed={st['seed']}"] if "seed" in st else []
    if "steps" in st:
        common.append(f"--steps={st['steps']}")
    if "guidance" in st and not prov.get("guidance_rule"):
        # guidance chosen by the model per evidence class: the command leaves it to the model
        # too, so the condition and its control get the same scales as in the app
        common.append(f"--guidance={st['guidance']:g}")
    lines = [f"# {len(conds)} condition(s) made by {model} "
             f"(weights sha256 {str(prov.get('weights_sha256', '?'))[:12]}…, engine "
             f"{prov.get('engine_version', '?')})"]
    if len(conds) > 1 and exp.mode != "perturb":
        lines.append("# the app drew these conditions in one run; each line below draws one "
                     "condition with its control from the same seed")
    for i, c in enumerate(conds, 1):
        cargs = _condition_args(c)
        name = f"{out_dir}/condition{i}.h5ad"
        if exp.mode == "perturb":
            src = data_path or "YOUR_CELLS.h5ad"
            gen = ["perturb-studio", "generate", "--model", model, *cargs, "--from-cells", src,
                   *common, "-o", name]
            lines.append("# perturbs the same control cells you chose in the app (select them "
                         "with --from-key KEY=VALUE)")
        else:
            gen = ["perturb-studio", "generate", "--model", model, *cargs,
                   f"-n={st['n']}", "--with-control", *common, "-o", name]
        lines.append(shlex.join(gen))
        if exp.mode != "perturb" and c.get("perturbations"):
            lines.append(shlex.join(["perturb-studio", "effects", "--model", model, *cargs,
                                     f"-n={st['n']}", *common, "--json"]))
    return lines


# -- save ---------------------------------------------------------------------------------------
@dataclass
class SavedExperiment:
    """One experiment as read back from a session folder."""

    name: str
    adata: Any
    mode: str
    model_name: str
    weights_sha256: str
    conditions: list
    created: float
    source: Any = None
    read_only: str = ""                    # why (empty: the model is here, unchanged)
    model_path: str | None = None
    file: str | None = None                # the cells' h5ad in the session folder


@dataclass
class SessionManifest:
    experiments: list = field(default_factory=list)     # SavedExperiment
    dataset_path: str | None = None
    roles: dict | None = None
    current: int = -1
    view: dict = field(default_factory=dict)
    folder: str = ""


def _schema_dict(schema) -> dict | None:
    if schema is None:
        return None
    try:
        return asdict(schema)
    except TypeError:
        return None


def save_session(folder, entries, *, dataset_path: str | None = None, schema=None,
                 current_id: int | None = None, view: dict | None = None,
                 progress=None, prune: bool = False) -> Path:
    """Write ``entries`` (app.session.HistoryEntry) to ``folder``: cells first (each
    atomically; an experiment already saved there is not written again), the manifest last,
    so a session folder is never half-written. ``prune`` (the autosave folder only): remove
    the ``exp-*.h5ad`` files the manifest no longer lists (deleted experiments, earlier
    runs)."""
    import engine
    from engine.export import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    exps = []
    owned = {Path(e.file).name for e in entries
             if e.file and Path(e.file).parent.resolve() == folder.resolve()}
    for i, e in enumerate(entries, 1):
        exp = e.experiment
        mine = e.file and Path(e.file).parent.resolve() == folder.resolve() and \
            Path(e.file).exists()
        if mine:                      # kept here already (saved before, or opened from here)
            file = Path(e.file).name
        else:                         # a new name that no other experiment here uses
            k, file = 0, f"exp-{e.id:03d}.h5ad"
            while file in owned or (folder / file).exists():
                k += 1
                file = f"exp-{e.id:03d}-{k}.h5ad"
            owned.add(file)
            engine.write_h5ad(exp.adata, folder / file)
            e.file = str(folder / file)
        src_file = None
        if exp.mode == "perturb" and exp.source is not None:
            src_file = file.replace(".h5ad", "-source.h5ad")
            if not (folder / src_file).exists():
                _write_plain_h5ad(exp.source, folder / src_file)
        prov = provenance(exp.adata)
        exps.append({
            "id": e.id, "name": e.name, "file": file, "source_file": src_file,
            "mode": exp.mode, "created": e.created, "cells": int(exp.adata.n_obs),
            "model": {"name": exp.model_name, "weights_sha256": prov.get("weights_sha256", ""),
                      "path": prov.get("model_path", "")},
            "conditions": conditions_of(exp.adata), "labels": list(exp.labels),
            "settings": settings_of(exp), "read_only": e.read_only})
        if progress is not None:
            progress(i / max(len(entries), 1))
    manifest = {"format": FORMAT, "version": VERSION,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "engine_version": getattr(engine, "__version__", ""),
                "dataset": {"path": dataset_path, "roles": _schema_dict(schema)},
                "current": current_id, "view": view or {}, "experiments": exps}
    with atomic_path(folder / MANIFEST, suffix=".tmp.json") as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=2, default=_json_default))
    if prune:
        listed = {e["file"] for e in exps} | {e["source_file"] for e in exps if
                                              e["source_file"]}
        for f in folder.glob("exp-*.h5ad"):
            if f.name not in listed and f.is_file() and not f.is_symlink():
                f.unlink()
    return folder


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _write_plain_h5ad(adata, path: Path) -> None:
    from engine.export import atomic_path

    with atomic_path(path, suffix=".tmp.h5ad") as tmp:
        a = adata.copy()
        a.uns = {}
        a.write_h5ad(tmp)


# -- open ---------------------------------------------------------------------------------------
def read_manifest(folder) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not a Perturb Studio session (no {MANIFEST})")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Perturb Studio session manifest")
    if int(m.get("version", 0)) > VERSION:
        raise ValueError(f"{path} was written by a newer Perturb Studio (session version "
                         f"{m.get('version')}); update the app to open it")
    return m


def check_model(name: str, sha: str, infos) -> tuple[Any, str]:
    """(ModelInfo, "") when the model ``name`` is installed with the same weights, else
    (None, why)."""
    info = next((i for i in infos if i.name == name), None)
    if info is None:
        return None, (f"the model {name!r} is not installed here; its cells are shown, but "
                      "effects with intervals and Copy as command need the model")
    try:
        now = weights_sha256(info.path)
    except OSError as e:
        return None, f"the weights of {name!r} cannot be read ({e})"
    if sha and now != sha:
        return None, (f"the model {name!r} has changed since this experiment was made (weights "
                      f"sha256 {sha[:12]}… then, {now[:12]}… now); its cells are shown, but "
                      "nothing is recomputed with the changed model")
    return info, ""


def load_session(folder, infos, *, progress=None, cancel=None) -> SessionManifest:
    """Read a session folder (on a worker): every experiment's cells and whether its model is
    here unchanged (``infos``: engine.list_models())."""
    import anndata as ad

    folder = Path(folder)
    m = read_manifest(folder)
    out = SessionManifest(folder=str(folder))
    ds = m.get("dataset") or {}
    out.dataset_path = ds.get("path")
    out.roles = ds.get("roles")
    out.view = m.get("view") or {}
    exps = m.get("experiments") or []
    for i, e in enumerate(exps, 1):
        if cancel is not None and cancel.is_set():
            break
        file = folder / str(e.get("file", ""))
        if file.parent.resolve() != folder.resolve() or not file.is_file():
            raise ValueError(f"{folder}: the cells of {e.get('name')!r} ({file.name}) are "
                             "missing")
        adata = ad.read_h5ad(file)
        src = None
        if e.get("source_file"):
            sfile = folder / str(e["source_file"])
            if sfile.parent.resolve() == folder.resolve() and sfile.is_file():
                src = ad.read_h5ad(sfile)
        model = e.get("model") or {}
        info, why = check_model(str(model.get("name", "")), str(model.get("weights_sha256", "")),
                                infos)
        saved = SavedExperiment(str(e.get("name", "")), adata, str(e.get("mode", "denovo")),
                                str(model.get("name", "")), str(model.get("weights_sha256", "")),
                                list(e.get("conditions") or []),
                                float(e.get("created", time.time())), src, why,
                                str(info.path) if info is not None else None, str(file))
        if e.get("id") == m.get("current"):
            out.current = len(out.experiments)
        out.experiments.append(saved)
        if progress is not None:
            progress(i / max(len(exps), 1))
    if out.current < 0 and out.experiments:
        out.current = len(out.experiments) - 1
    return out
