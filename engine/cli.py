"""``perturb-studio`` command line: train, generate, evaluate, models, bench.

Errors a user can fix print one ``error: ...`` line and exit with status 2 (a malformed option:
argparse's usage and one ``error:`` line, also status 2); Ctrl-C exits with 130 and leaves no
partial output (every file is written atomically). Anything else is a bug: one
``error: internal error (...)`` line and status 1 (``PERTURB_STUDIO_DEBUG=1`` shows the
traceback). Every option is checked before a model is loaded or a file is read.

Importing this module is cheap (no torch, numpy or anndata): ``app.__main__`` imports
:data:`COMMANDS` from it.

Two console scripts (pyproject.toml):

- ``perturb-studio-cli`` (:func:`main`): the commands only; needs no Qt, so a cluster node can
  install the engine alone (``pip install perturb-studio``).
- ``perturb-studio`` (:func:`launch`): a command runs here; anything else (no arguments, a data
  file, ``--selftest``) opens the window, found through the ``perturb_studio.gui`` entry point
  group (the engine never imports ``app``). Without the ``gui`` extra that prints one line
  saying how to install it and exits 2.

``--backbone`` / ``--objective`` accept the names of the engine's registries
(``engine.nn.blocks.BACKBONES``, ``engine.diffusion.schedules.OBJECTIVES``), read when the
option is parsed (they import torch, which training needs anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import PerturbStudioError

COMMANDS = ("train", "generate", "effects", "evaluate", "models", "bench")
#: Seeds go to ``np.random.seed`` (training), which takes 0 .. 2**32 - 1, and to torch generators.
SEED_MAX = 2**32 - 1
#: The sampling limits the model enforces (engine.model._check_sampling).
STEPS_MAX = 1000
GUIDANCE_MAX = 20.0
#: Output files ``generate -o`` writes, by suffix (engine.export.write_h5ad / write_csv).
OUTPUT_SUFFIXES = (".h5ad", ".csv", ".csv.gz", ".tsv", ".tsv.gz")
#: The entry point group where the window registers itself (pyproject.toml).
GUI_ENTRY_POINTS = "perturb_studio.gui"
#: The packages the window needs (the ``gui`` extra) and the line that says how to get them.
GUI_MODULES = ("PySide6", "pyqtgraph")
GUI_MISSING = ("error: the Perturb Studio window is not installed; install it with "
               "`pip install 'perturb-studio[gui]'` (the commands work without it: "
               "perturb-studio-cli --help)")


def _registry_choice(what: str, module: str, registry: str):
    """An argparse type: a name in the engine registry ``module.registry`` (imported when the
    option is parsed, so building the parser stays cheap)."""

    def names() -> list[str]:
        import importlib

        return sorted(getattr(importlib.import_module(module, __package__), registry))

    def parse(text: str) -> str:
        value = str(text).strip()
        known = names()
        if value not in known:
            raise argparse.ArgumentTypeError(f"unknown {what} {_short(text)}; choose from "
                                             f"{', '.join(known)}")
        return value

    parse.__name__ = what
    parse.names = names
    return parse


BACKBONE = _registry_choice("backbone", ".nn.blocks", "BACKBONES")
OBJECTIVE = _registry_choice("objective", ".diffusion.schedules", "OBJECTIVES")


def _int_arg(lo: int, hi: int | None = None, *, extra: str = ""):
    """An argparse type: a whole number in lo..hi, else a message that says the range."""
    span = f"from {lo:,} to {hi:,}" if hi is not None else f">= {lo:,}"

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number {span}{extra}, got "
                                             f"{_short(text)}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {span}{extra}, got {_short(text)}")
        return value

    parse.__name__ = "whole number"
    return parse


def _float_arg(lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number from {lo:g} to {hi:g}, got "
                                             f"{_short(text)}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a finite number from {lo:g} to {hi:g}, "
                                             f"got {_short(text)}")
        return value

    parse.__name__ = "number"
    return parse


def _short(text, limit: int = 60) -> str:
    s = repr(str(text))
    return s if len(s) <= limit else s[:limit] + "...'"


def _kv_list(text: str) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE]`` (``--from-key``, ``--exclude``) -> dict, refusing an item
    without ``=``, an empty key or value, a key given twice, and an empty list."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{_short(item)} must look like KEY=VALUE (an obs "
                                             "column, =, a value)")
        k, v = (x.strip() for x in item.split("=", 1))
        if not k or not v:
            raise argparse.ArgumentTypeError(f"{_short(item)} has an empty "
                                             f"{'column name' if not k else 'value'}; write "
                                             "KEY=VALUE")
        if k in out:
            raise argparse.ArgumentTypeError(f"column {_short(k)} is given twice")
        out[k] = v
    if not out:
        raise argparse.ArgumentTypeError("give at least one KEY=VALUE pair")
    return out


class _Bar:
    """A tqdm progress bar fed by engine Progress records (the CLI asks for tqdm; the GUI not)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet, self.bar, self.phase = quiet, None, None

    def __call__(self, p) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if p.phase != self.phase:
            self.close()
            self.phase = p.phase
            self.bar = tqdm(total=p.total, desc=p.phase, unit=" cells" if "cell" in p.phase
                            else " steps", file=sys.stderr, dynamic_ncols=True)
        self.bar.n = p.done
        if p.loss is not None:
            self.bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _schema_from_args(args, adata):
    from .data.schema import Schema, guess_schema

    keys = dict(cell_type_key=args.cell_type_key, perturbation_key=args.perturbation_key,
                perturbation_type_key=args.perturbation_type_key, dose_key=args.dose_key)
    if all(v is None for v in keys.values()) and not args.context_keys:
        schema = guess_schema(adata)
        print(f"guessed column roles: {json.dumps(schema.to_dict())}", file=sys.stderr)
    else:
        schema = Schema(**keys, context_keys=tuple(filter(None, (args.context_keys or "")
                                                          .split(","))))
    if args.control is not None:
        schema.control_label = args.control
    if args.drop:
        schema.drop_labels = tuple(args.drop)
    schema.check(adata)
    return schema


def _budget_overrides(args) -> dict:
    """``--ae-steps``, ``--epochs``, ``--flow-steps`` as TrainConfig overrides; an explicit
    flow budget turns off its growth with the data (engine.train.training_budget)."""
    out = {}
    if args.ae_steps:
        out["ae_steps"] = args.ae_steps
    if args.epochs:
        out["ae_epochs"] = args.epochs
    if args.flow_steps:
        out["flow_steps"] = args.flow_steps
        out["scale_budget"] = False
    return out


def _open_training_data(args, main: bool):
    """The data to train on: a BackedDataset (counts stay on disk) when ``--streaming`` or
    when the in-memory estimate exceeds half the available memory (engine.data.stream.
    should_stream), else the dataset read in memory as before."""
    from .data.io import read_dataset
    from .data.stream import BackedDataset, should_stream

    streaming = args.streaming
    if streaming is None:
        streaming, why = should_stream(args.data)
        if streaming and main:
            print(f"streaming from disk: {why}", file=sys.stderr)
    if streaming:
        if Path(args.data).suffix.lower() != ".h5ad":
            raise PerturbStudioError(f"--streaming reads h5ad files; {args.data} is not one")
        return BackedDataset.open(args.data)
    return read_dataset(args.data)


def cmd_train(args) -> int:
    from .assess import train_and_assess
    from .checkpoint import check_destination
    from .device import resolve_device
    from .distributed import init_from_env, shutdown
    from .resume import partial_folder

    dist = init_from_env(resolve_device(args.device))
    if dist.main:
        check_destination(args.out, overwrite=args.overwrite)   # before reading or training
    adata = _open_training_data(args, dist.main)
    if dist.active and dist.main:
        print(f"data-parallel training: world size {dist.world} ({dist.backend})",
              file=sys.stderr, flush=True)
    schema = _schema_from_args(args, adata) if dist.main or args.quiet else \
        _quiet(_schema_from_args, args, adata)
    bar = _Bar(args.quiet or not dist.main)
    partial = partial_folder(args.out)
    try:
        model = train_and_assess(
            adata, schema, args.out, holdout=args.holdout, seed=args.seed,
            overwrite=args.overwrite, exclude=args.exclude or [], progress=bar,
            backbone=args.backbone, device=args.device, name=args.name,
            data_file=str(args.data), dist=dist, resume=args.resume,
            checkpoint_dir=partial if args.checkpoint_every > 0 or args.resume else None,
            checkpoint_every=args.checkpoint_every,
            **({"objective": args.objective} if args.objective else {}),
            **({"members": args.members} if args.members else {}),
            **({"target_prior": args.target_prior} if args.target_prior else {}),
            **({"anchor": args.anchor} if args.anchor is not None else {}),
            **_budget_overrides(args))
    except KeyboardInterrupt:
        if dist.main and (partial / "checkpoint.json").is_file():
            print(f"interrupted; the model was not written; a checkpoint is in {partial}: run "
                  "the same command with --resume to continue", file=sys.stderr)
            return 130
        raise
    finally:
        bar.close()
    shutdown(dist)            # no barrier: rank 0 alone judges and writes, the others are done
    if not dist.main:
        return 0
    tr = model.config["training"]
    print(f"trained {model.name}: {tr['n_cells']} cells, {tr['n_genes']} genes, "
          f"{tr['n_conditions']} conditions, {model.members} ensemble member"
          f"{'s' * (model.members != 1)} in {tr['seconds']:.0f} s -> {model.path}")
    for line in model.card.get("plain", []):
        print(f"  {line}")
    return 0


def _quiet(fn, *a):
    """Run ``fn`` with stderr silenced (ranks > 0 of a data-parallel run print nothing)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        return fn(*a)


def _condition_from_args(args, model=None):
    """The condition options as a Condition (syntax only without ``model``; with it, the
    model's control label also means "no perturbation")."""
    from .conditions.spec import Condition

    return Condition.parse(args.cell_type, args.perturbation, args.perturbation_type, args.dose,
                           args.context,
                           control_label=None if model is None else model.space.control_label)


def _output_path(text: str) -> Path:
    """Check ``generate -o`` before any work: a suffix a writer supports."""
    out = Path(text)
    name = out.name.lower()
    if not any(name.endswith(s) and len(name) > len(s) for s in OUTPUT_SUFFIXES):
        hint = "; for tab-separated text use .tsv" if name.endswith((".txt", ".txt.gz")) else ""
        raise PerturbStudioError(f"output file must end in {', '.join(OUTPUT_SUFFIXES)}, got "
                                 f"{_short(out.name)}{hint}")
    return out


def cmd_generate(args) -> int:
    from .export import estimate_output_bytes, preflight_output, write_csv, write_h5ad
    from .model import PerturbModel

    out = _output_path(args.output)
    _condition_from_args(args)                   # refuse a malformed condition before loading
    if args.from_key and not args.from_cells:
        raise PerturbStudioError("--from-key selects cells of --from-cells; give --from-cells "
                                 "DATA too")
    preflight_output(out)                        # the destination is writable, before any work
    model = PerturbModel.load(args.model, device=args.device)
    cond = _condition_from_args(args, model)
    checked = model.check_condition(cond)        # before reading --from-cells
    for note in model.target_notes(cond):        # aliases read as symbols, genes never perturbed
        print(note)
    cells = _read_cells(args.from_cells, args.from_key) if args.from_cells else None
    n = args.n if cells is None else cells.n_obs
    preflight_output(out, need_bytes=estimate_output_bytes(n, len(model.genes), model.density,
                                                           out))
    bar = _Bar(args.quiet)
    t0 = time.perf_counter()
    try:
        if cells is not None:
            adata = model.perturb(cells, cond, seed=args.seed, steps=args.steps,
                                  guidance=args.guidance, progress=bar,
                                  anchor=False if args.no_anchor else None)
        else:
            adata = model.generate_many([cond], args.n, seed=args.seed, steps=args.steps,
                                        guidance=args.guidance, progress=bar,
                                        include_control=args.with_control and
                                        not cond.is_control,
                                        anchor=False if args.no_anchor else None)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    (write_h5ad if out.name.lower().endswith(".h5ad") else write_csv)(adata, out)
    new = model.space.new_targets(checked)
    seen = "" if model.space.is_seen(cond) else \
        " (this exact condition was not in training: a prediction by composition)"
    if new:
        seen = f" ({', '.join(new)} never perturbed in training: predicted from gene-set priors)"
    what = (f"{adata.n_obs} cells ({args.n} of {cond.label}{seen} and {args.n} of its control)"
            if cells is None and args.with_control and not cond.is_control else
            f"{adata.n_obs} cells of {cond.label}{seen}")
    print(f"{what} in {dt:.1f} s "
          f"({adata.n_obs / max(dt, 1e-9):,.0f} cells/s) -> {out}")
    if new:
        ev = model.evidence(checked)
        print(f"evidence: {ev.label}")
        print(f"verdict: {ev.verdict}")
    if args.guidance is None and model.guidance_by_evidence and not args.quiet:
        from .effects import classify

        kind = classify(model.space, model.space.complete(checked))
        print(f"guidance {model.guidance_for(checked):g} (the model's choice for {kind} "
              "conditions, made on held-out folds; --guidance overrides it)")
    anchor = adata.uns.get("perturb_studio", {}).get("anchor")
    if anchor and not args.quiet:
        groups = next(iter(anchor["conditions"].values()))
        what = ("the sum of its singles' latent effects" if len(cond.perturbations) > 1 and
                len(groups) == len(cond.perturbations) and
                all(g.split(" | ")[0] == str(cond.cell_type) for g in groups) else
                f"the perturbation's latent effect in {len(groups)} other group(s)")
        refined = (f"refined by the flow from time {anchor['refine']:g}" if anchor["refine"] > 0
                   else "not refined")
        print(f"started from the control cells of {cond.cell_type} plus {what} "
              f"({', '.join(groups)}), {refined}: the model's choice for this kind of "
              "condition, made on held-out folds (--no-anchor: the flow alone)")
    return 0


def cmd_effects(args) -> int:
    from .effects import predict_effects
    from .model import PerturbModel

    _condition_from_args(args)                   # refuse a malformed condition before loading
    model = PerturbModel.load(args.model, device=args.device)
    cond = model.check_condition(_condition_from_args(args, model))
    if cond.is_control:
        raise PerturbStudioError("effects compares a perturbation with its control; give "
                                 "--perturbation (the control has no effect to predict)")
    bar = _Bar(args.quiet or args.json)
    try:
        res = predict_effects(model, cond, n=args.n, seed=args.seed, steps=args.steps,
                              guidance=args.guidance, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(res.to_json()))
        return 0
    ev = res.evidence
    print(f"{cond.label} vs {res.control.label}  [{model.name}, {res.members} member"
          f"{'s' * (res.members != 1)}, {res.n_cells:,} cells]")
    for note in model.target_notes(_condition_from_args(args, model)):
        print(note)
    print(f"evidence: {ev.label}")
    print(f"verdict: {ev.verdict}")
    if res.baseline is not None:
        print(f"baseline: {res.baseline.name} ({res.baseline.detail})")
    if not res.has_interval:
        print("interval: none (a single-member model has no uncertainty estimate)")
    df = res.table().head(args.top)
    print(f"\n{'gene':<14}{'log2FC':>9}{'90% interval':>22}{'agree':>7}{'baseline':>10}")
    for r in df.itertuples():
        iv = (f"[{r.low:+.2f}, {r.high:+.2f}]" if math.isfinite(r.low) else "n/a")
        base = f"{r.baseline_log2fc:+.2f}" if math.isfinite(r.baseline_log2fc) else "n/a"
        print(f"{str(r.gene)[:13]:<14}{r.log2fc:>+9.2f}{iv:>22}"
              f"{('yes' if r.members_agree else 'no'):>7}{base:>10}")
    print("\nlog2FC: difference of mean log2(1 + normalised expression), prediction minus its "
          "control; the interval is the ensemble's 90% interval for the effect")
    return 0


def _read_cells(path, key_value):
    from .data.io import read_dataset

    cells = read_dataset(path)
    if key_value:
        for k, v in key_value.items():
            if k not in cells.obs:
                raise PerturbStudioError(f"--from-key: {path} has no obs column {k!r}; columns "
                                         f"are: {', '.join(map(str, cells.obs.columns))}")
            mask = (cells.obs[k].astype(str) == v).to_numpy()
            if not mask.any():
                raise PerturbStudioError(f"--from-key: no cell of {path} has {k} == {v!r}")
            cells = cells[mask].copy()
    return cells


def cmd_evaluate(args) -> int:
    from .data.io import read_dataset
    from .data.schema import Schema
    from .evaluate import evaluate
    from .model import PerturbModel

    _condition_from_args(args)                   # refuse a malformed condition before loading
    model = PerturbModel.load(args.model, device=args.device)
    cond = _condition_from_args(args, model)
    model.check_condition(cond)                  # before reading --data
    real = read_dataset(args.data)
    schema = Schema.from_dict(model.config.get("schema", {}))
    for k in ("cell_type_key", "perturbation_key", "perturbation_type_key", "dose_key"):
        if getattr(args, k) is not None:
            setattr(schema, k, getattr(args, k))
    if args.context_keys is not None:
        schema.context_keys = tuple(filter(None, args.context_keys.split(",")))
    _fill_missing_columns(args, model, real, schema, cond)
    modes = ["denovo", "perturb"] if args.mode == "both" else [args.mode]
    results = [evaluate(model, real, schema, cond, mode=m, seed=args.seed, steps=args.steps,
                        guidance=args.guidance) for m in modes]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        for r in results:
            print(f"# {cond.label}  mode={r.mode}  real cells={r.n_real}  "
                  f"control cells={r.n_control}")
            print(r.table())
    return 0


def _fill_missing_columns(args, model, real, schema, cond) -> None:
    """Columns the model's schema names but ``--data`` lacks (e.g. ``perturbation_type`` in
    the papalexi file): give every cell the value of the matching option (``--cell-type``,
    ``--perturbation-type``, ``--context``), or the one value the model knows for that role,
    and say so on stderr; else refuse, naming the column and the options that fix it.
    Columns the user named with a ``--*-key`` option are never filled (a typo stays an error).
    """
    from .errors import SchemaError

    sp = model.space
    types = {p.type for p in cond.perturbations if p.type}
    ctx = cond.context_dict()
    # (column, named by the user, what it holds, option giving a value, that value, known
    #  values, option naming the column)
    roles = [(schema.cell_type_key, args.cell_type_key is not None, "cell type", "--cell-type",
              cond.cell_type, sp.cell_types, "--cell-type-key COLUMN"),
             (schema.perturbation_type_key, args.perturbation_type_key is not None,
              "perturbation type", "--perturbation-type",
              next(iter(types)) if len(types) == 1 else None, sp.perturbation_types,
              "--perturbation-type-key COLUMN")]
    roles += [(k, args.context_keys is not None, f"context level {k!r}", f"--context {k}=VALUE",
               ctx.get(k), sp.context_values.get(k, []), "--context-keys COLUMNS")
              for k in schema.context_keys]
    for col, named, what, option, given, known, key in roles:
        if col is None or named or col in real.obs.columns:
            continue
        if col in schema.context_keys and len(known) != 1 and \
                _fill_from_cell_type(args, sp, real, schema, col):
            continue
        if given is not None:
            value, why = given, f"from {option.split()[0]}"
        elif len(known) == 1:
            value, why = known[0], "the only value this model knows"
        else:
            raise SchemaError(f"{args.data} has no column {col!r}, where this model reads the "
                              f"{what}; name the column that holds it with {key}, or give one "
                              f"value for every cell with {option} (known: {_ls(known)})")
        real.obs[col] = value
        print(f"note: {args.data} has no column {col!r}; every cell gets {what} {value!r} "
              f"({why})", file=sys.stderr)


def _fill_from_cell_type(args, sp, real, schema, col: str) -> bool:
    """Fill a missing context column per cell from its cell type, when every cell type of the
    data had exactly one value of that level in training (k562 -> bone marrow, A172 -> brain)."""
    ct_col = schema.cell_type_key
    if ct_col is None or ct_col not in real.obs.columns or not sp.cell_types:
        return False
    cell_types = real.obs[ct_col].astype(str)
    mapping = {}
    for ct in cell_types.unique():
        values = sp.context_of(ct).get(col, set())
        if len(values) != 1:
            return False
        mapping[ct] = next(iter(values))
    real.obs[col] = cell_types.map(mapping).astype("category")
    shown = _ls([f"{ct} -> {v}" for ct, v in sorted(mapping.items())], 6)
    print(f"note: {args.data} has no column {col!r}; every cell gets the {col} its cell type had "
          f"in training ({shown})", file=sys.stderr)
    return True


def _ls(values, limit: int = 20) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:limit]) + (f", ... ({len(values)} in all)"
                                         if len(values) > limit else "")


def cmd_models(args) -> int:
    from .registry import list_models

    models = list_models()
    if args.json:
        print(json.dumps([{"name": m.name, "path": str(m.path), "source": m.source,
                           "n_genes": m.n_genes, "backbone": m.backbone,
                           "members": m.members, "reference_cells": m.reference_cells,
                           "conditions": m.space.to_dict() | {"seen": len(m.space.seen)}}
                          for m in models], indent=1))
        return 0
    if not models:
        print("no models installed")
    for m in models:
        sp = m.space
        k = m.members
        print(f"{m.name}  [{m.source}]  {m.n_genes} genes, backbone {m.backbone}, "
              f"{k} ensemble member{'s' * (k != 1)}, {m.reference_cells:,} reference cells")
        if sp.context_levels:
            print("  context: " + " > ".join(f"{lv} ({', '.join(sp.context_values[lv])})"
                                              for lv in sp.context_levels))
        if sp.cell_types:
            print(f"  cell types ({len(sp.cell_types)}): {', '.join(sp.cell_types)}")
        if sp.targets:
            tt = sorted({t for v in sp.target_types.values() for t in v})
            print(f"  perturbations ({len(sp.targets)}, up to {sp.max_perturbations} at once"
                  f"{', types ' + ', '.join(tt) if tt else ''}): "
                  f"{', '.join(sp.targets[:30])}{' ...' if len(sp.targets) > 30 else ''}")
        else:
            print("  no perturbations (reference cell populations only)")
        print(f"  dose: {'yes' if sp.has_dose else 'no'}   path: {m.path}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    result = run_bench(model=args.model, n=args.n, threads=args.threads, device=args.device,
                       big_n=args.big_n, train=args.train)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perturb-studio", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="In silico single-cell perturbation experiments. Run without arguments to "
                    "open the app.",
        epilog="desktop app options (need the gui extra):\n"
               "  perturb-studio                      open the app\n"
               "  perturb-studio DATA.h5ad            open the app with a data file\n"
               "  perturb-studio --selftest           check an installation: load the shipped "
               "models, generate, write\n"
               "  perturb-studio --screenshot-tour DIR  run the main flow and save a PNG of "
               "each screen")
    p.add_argument("--version", action="version", version=f"perturb-studio {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def roles(sp, *, control=True):
        sp.add_argument("--cell-type-key", help="obs column with cell types / cell lines")
        sp.add_argument("--perturbation-key", help="obs column with perturbations (A or A+B)")
        sp.add_argument("--perturbation-type-key", help="obs column with CRISPRa/CRISPRi/KO/...")
        sp.add_argument("--dose-key", help="obs column with doses")
        sp.add_argument("--context-keys", help="obs columns, broad to narrow: organism,tissue")
        if control:
            sp.add_argument("--control", help="perturbation value of control cells")
            sp.add_argument("--drop", action="append", metavar="LABEL",
                            help="perturbation value of cells to leave out (repeatable)")

    t = sub.add_parser("train", help="train a model on a dataset")
    t.add_argument("data", help="h5ad, CSV or 10x (h5 / mtx) file with raw counts")
    t.add_argument("--out", required=True, help="model folder to write (a new or empty folder)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing Perturb Studio model folder at --out (never "
                        "anything else)")
    roles(t)
    t.add_argument("--exclude", action="append", type=_kv_list, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="drop the cells matching all pairs (repeatable), e.g. to hold out a group")
    t.add_argument("--backbone", type=BACKBONE, default="mlp",
                   help="network backbone, a name in engine.nn.blocks.BACKBONES (default mlp)")
    t.add_argument("--objective", type=OBJECTIVE,
                   help="training objective, a name in engine.diffusion.schedules.OBJECTIVES "
                        "(default: the engine's)")
    t.add_argument("--members", type=_int_arg(1, 64), default=None,
                   help="ensemble members, 1 to 64 (default 5): the spread of their "
                        "predictions is each effect's uncertainty; each member costs one more "
                        "flow training")
    t.add_argument("--target-prior", choices=("auto", "gene_sets", "none"), default=None,
                   help="gene-set priors in the perturbation-target embedder, so the model can "
                        "be asked for genes never perturbed in training (default auto: on when "
                        "most targets are gene symbols the priors know)")
    t.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=None,
                   help="draw a cell type never seen with a perturbation from its control cells "
                        "plus the effect measured in the most similar cell types, refined by "
                        "the flow (default with the rectified-flow objective; the rule chosen "
                        "on Kang's leave-one-cell-type-out folds, also ahead of the flow alone "
                        "on CRISPR genes held out in one cell line; off by default with DDPM, "
                        "where it lost). --no-anchor: the flow alone for every condition")
    t.add_argument("--holdout", type=_float_arg(0.0, 0.5), default=0.2,
                   help="fraction of the cells of every condition held out to judge the model "
                        "(default 0.2; 0 trains on everything and leaves the model unjudged)")
    t.add_argument("--name", help="model name (default: the folder name)")
    t.add_argument("--seed", type=_int_arg(0, SEED_MAX), default=0,
                   help=f"random seed, 0 to {SEED_MAX}")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                   help="read minibatches from disk instead of loading every count (h5ad with "
                        "CSR counts); default: automatic when training in memory would need "
                        "more than half the available memory")
    t.add_argument("--ae-steps", type=_int_arg(1, 10_000_000), default=None,
                   help="autoencoder steps (default: grows with the data, see README)")
    t.add_argument("--epochs", type=_int_arg(1, 100_000), default=None,
                   help="autoencoder epochs (passes over the cells), instead of --ae-steps")
    t.add_argument("--flow-steps", type=_int_arg(1, 10_000_000), default=None,
                   help="flow steps per ensemble member (default 3000, growing with the "
                        "square root of the cells above 100,000)")
    t.add_argument("--checkpoint-every", type=_float_arg(0.0, 1e6), default=300.0,
                   metavar="SECONDS",
                   help="write a resumable checkpoint to OUT.partial every SECONDS and on "
                        "Ctrl-C (default 300; 0: none)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in OUT.partial")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    def condition(sp):
        sp.add_argument("--model", required=True, help="installed model name or model folder")
        sp.add_argument("--cell-type")
        sp.add_argument("--perturbation", help="target, A+B for combinations, or control")
        sp.add_argument("--perturbation-type", help="e.g. CRISPRa, CRISPRi, knockout")
        sp.add_argument("--dose", help="dose (1+0.5 for a combination)")
        sp.add_argument("--context", help="level=value,... e.g. organism=human,tissue=blood")
        sp.add_argument("--seed", type=_int_arg(0, SEED_MAX), default=0,
                        help=f"random seed, 0 to {SEED_MAX}")
        sp.add_argument("--steps", type=_int_arg(1, STEPS_MAX),
                        help=f"sampling steps, 1 to {STEPS_MAX} (default: the model's)")
        sp.add_argument("--guidance", type=_float_arg(0.0, GUIDANCE_MAX),
                        help=f"classifier-free guidance scale, 0 to {GUIDANCE_MAX:g} "
                             "(default: the model's, per evidence class where its config "
                             "has sampling.guidance_by_evidence)")
        sp.add_argument("--device", default="auto")

    g = sub.add_parser("generate", help="generate cells for a condition")
    condition(g)
    g.add_argument("-n", type=_int_arg(1), default=1000, help="number of cells (de novo mode)")
    g.add_argument("--from-cells", metavar="DATA", help="perturb these cells instead (mode 2)")
    g.add_argument("--no-anchor", action="store_true",
                   help="for a cell type never seen with the perturbation, use the flow alone "
                        "instead of the model's latent baseline (sampling.anchor)")
    g.add_argument("--from-key", metavar="KEY=VALUE[,KEY=VALUE]", type=_kv_list,
                   help="use only the cells of --from-cells matching all pairs")
    g.add_argument("--with-control", action="store_true",
                   help="also generate -n cells of the matching control (same cell type and "
                        "context, no perturbation), as the app does (de novo mode)")
    g.add_argument("-o", "--output", required=True,
                   help="OUT.h5ad, OUT.csv or OUT.tsv (.csv.gz / .tsv.gz compress)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    x = sub.add_parser("effects", help="predicted effect per gene, with its 90%% interval, "
                       "baseline and evidence",
                       description="Predicted effect of a perturbation on every gene (mean "
                       "log-expression minus the matching control's), with the ensemble's 90%% "
                       "interval, the simple baseline (additive for combinations of measured "
                       "parts, mean shift for a perturbation measured in other cell types) and "
                       "a plain verdict on how far to trust this kind of condition.")
    condition(x)
    x.add_argument("-n", type=_int_arg(2, 1_000_000), default=2000,
                   help="generated cells of the condition and of its control (default 2000)")
    x.add_argument("--top", type=_int_arg(1, 100_000), default=20,
                   help="genes shown, largest effects first (text output)")
    x.add_argument("--json", action="store_true",
                   help="print one JSON object: genes, effect, low, high, interval, baseline "
                        "{name, effect}, verdict, evidence, ...")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_effects)

    e = sub.add_parser("evaluate", help="score a model against real cells, beside baselines",
                       description="Score a model against real cells, beside baselines. A "
                       "column the model reads but --data lacks (e.g. perturbation_type) is "
                       "filled for every cell from --cell-type, --perturbation-type or "
                       "--context, or with the one value the model knows; otherwise name the "
                       "column with the matching --*-key option.")
    condition(e)
    e.add_argument("--data", required=True, help="real cells (h5ad)")
    roles(e, control=False)
    e.add_argument("--mode", choices=("denovo", "perturb", "both"), default="both")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("models", help="list installed models and what they condition on")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    b = sub.add_parser("bench", help="generation speed (cells/s) and peak memory")
    b.add_argument("--model", default="kang-ifnb-pbmc")
    b.add_argument("-n", type=_int_arg(1), default=20000, help="cells for the speed run")
    b.add_argument("--big-n", type=_int_arg(0), default=100000,
                   help="cells for the memory run (0: skip)")
    b.add_argument("--threads", type=_int_arg(1, 1024), default=2, help="CPU threads, 1 to 1024")
    b.add_argument("--device", default="cpu")
    b.add_argument("--train", action="store_true",
                   help="also measure training throughput (autoencoder cells/s; on the GPU "
                        "too when one is present, bf16)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status; never raises (argparse's exit on a bad
    option is returned as 2, ``--help`` and ``--version`` as 0)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:              # argparse printed usage + "error: ..." (or the help)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except PerturbStudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: ran out of memory; ask for fewer cells or close other programs; nothing "
              "was written", file=sys.stderr)
        return 2
    except BrokenPipeError:              # the reader went away: `perturb-studio models | head -1`
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:               # a bug: one line, not a traceback
        if os.environ.get("PERTURB_STUDIO_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"error: internal error ({type(e).__name__}: {msg}); please report this "
              "(PERTURB_STUDIO_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def _gui_available() -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in GUI_MODULES)
    except (ImportError, ValueError):
        return False


def _gui_entry():
    """The window's ``main(argv)`` from the entry point group, or None if none is installed."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=GUI_ENTRY_POINTS):
        return ep.load()
    return None


def launch(argv: list[str] | None = None) -> int:
    """``perturb-studio``: a command (or ``-h`` / ``--version``) runs :func:`main`; anything
    else is handed to the window (:data:`GUI_ENTRY_POINTS`), which opens or explains what is
    wrong with the arguments. Without the ``gui`` extra: one line, :data:`GUI_MISSING`, and
    status 2 (a misspelt command still gets argparse's "invalid choice")."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version")):
        return main(argv)
    gui = _gui_entry() if _gui_available() else None
    if gui is None:
        if argv and not argv[0].startswith("-") and not os.path.exists(argv[0]):
            return main(argv)                # e.g. "trian": argparse names the commands
        print(GUI_MISSING, file=sys.stderr)
        return 2
    return int(gui(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
