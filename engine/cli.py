"""``perturb-studio`` command line: train, generate, evaluate, models, bench.

Errors a user can fix print one ``error: ...`` line and exit with status 2; Ctrl-C exits with
130 and leaves no partial output (every file is written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import PerturbStudioError

COMMANDS = ("train", "generate", "evaluate", "models", "bench")


def _kv_list(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{item!r} must look like KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
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


def cmd_train(args) -> int:
    from .checkpoint import check_destination
    from .data.io import read_dataset
    from .train import train_model

    check_destination(args.out, overwrite=args.overwrite)   # before reading or training
    adata = read_dataset(args.data)
    schema = _schema_from_args(args, adata)
    bar = _Bar(args.quiet)
    try:
        model = train_model(adata, schema, args.out, backbone=args.backbone, seed=args.seed,
                            device=args.device, name=args.name, exclude=args.exclude or [],
                            progress=bar, data_file=str(args.data), overwrite=args.overwrite,
                            **({"objective": args.objective} if args.objective else {}))
    finally:
        bar.close()
    tr = model.config["training"]
    print(f"trained {model.name}: {tr['n_cells']} cells, {tr['n_genes']} genes, "
          f"{tr['n_conditions']} conditions in {tr['seconds']:.0f} s -> {model.path}")
    return 0


def _condition_from_args(args):
    from .conditions.spec import Condition

    return Condition.parse(args.cell_type, args.perturbation, args.perturbation_type, args.dose,
                           args.context)


def cmd_generate(args) -> int:
    from .export import write_csv, write_h5ad
    from .model import PerturbModel

    out = Path(args.output)
    if out.suffix.lower() not in (".h5ad", ".csv"):
        raise PerturbStudioError(f"output file must end in .h5ad or .csv, got {out.name!r}")
    model = PerturbModel.load(args.model, device=args.device)
    cond = _condition_from_args(args)
    bar = _Bar(args.quiet)
    t0 = time.perf_counter()
    try:
        if args.from_cells:
            cells = _read_cells(args.from_cells, args.from_key)
            adata = model.perturb(cells, cond, seed=args.seed, steps=args.steps,
                                  guidance=args.guidance, progress=bar)
        else:
            adata = model.generate(cond, args.n, seed=args.seed, steps=args.steps,
                                   guidance=args.guidance, progress=bar)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    (write_h5ad if out.suffix.lower() == ".h5ad" else write_csv)(adata, out)
    seen = "" if model.space.is_seen(cond) else \
        " (this exact condition was not in training: a prediction by composition)"
    print(f"{adata.n_obs} cells of {cond.label}{seen} in {dt:.1f} s "
          f"({adata.n_obs / max(dt, 1e-9):,.0f} cells/s) -> {out}")
    return 0


def _read_cells(path, key_value):
    from .data.io import read_dataset

    cells = read_dataset(path)
    if key_value:
        for k, v in _kv_list(key_value).items():
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

    model = PerturbModel.load(args.model, device=args.device)
    real = read_dataset(args.data)
    schema = Schema.from_dict(model.config.get("schema", {}))
    for k in ("cell_type_key", "perturbation_key", "perturbation_type_key", "dose_key"):
        if getattr(args, k) is not None:
            setattr(schema, k, getattr(args, k))
    if args.context_keys is not None:
        schema.context_keys = tuple(filter(None, args.context_keys.split(",")))
    for k in schema.context_keys:          # context columns constant in training files
        if k not in real.obs:
            values = model.space.context_values.get(k, [])
            if len(values) == 1:
                real.obs[k] = values[0]
    cond = _condition_from_args(args)
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


def cmd_models(args) -> int:
    from .registry import list_models

    models = list_models()
    if args.json:
        print(json.dumps([{"name": m.name, "path": str(m.path), "source": m.source,
                           "n_genes": m.n_genes, "backbone": m.backbone,
                           "conditions": m.space.to_dict() | {"seen": len(m.space.seen)}}
                          for m in models], indent=1))
        return 0
    if not models:
        print("no models installed")
    for m in models:
        sp = m.space
        print(f"{m.name}  [{m.source}]  {m.n_genes} genes, backbone {m.backbone}")
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
                       big_n=args.big_n)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perturb-studio", description=(
        "In silico single-cell perturbation experiments. Run without arguments to open the app."))
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
    t.add_argument("--backbone", choices=("mlp", "transformer"), default="mlp")
    t.add_argument("--objective", choices=("rectified_flow", "ddpm"))
    t.add_argument("--name", help="model name (default: the folder name)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    def condition(sp):
        sp.add_argument("--model", required=True, help="installed model name or model folder")
        sp.add_argument("--cell-type")
        sp.add_argument("--perturbation", help="target, A+B for combinations, or control")
        sp.add_argument("--perturbation-type", help="e.g. CRISPRa, CRISPRi, knockout")
        sp.add_argument("--dose", help="dose (1+0.5 for a combination)")
        sp.add_argument("--context", help="level=value,... e.g. organism=human,tissue=blood")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
        sp.add_argument("--guidance", type=float, help="classifier-free guidance scale")
        sp.add_argument("--device", default="auto")

    g = sub.add_parser("generate", help="generate cells for a condition")
    condition(g)
    g.add_argument("-n", type=int, default=1000, help="number of cells (de novo mode)")
    g.add_argument("--from-cells", metavar="DATA", help="perturb these cells instead (mode 2)")
    g.add_argument("--from-key", metavar="KEY=VALUE", help="use only these cells of --from-cells")
    g.add_argument("-o", "--output", required=True, help="OUT.h5ad or OUT.csv")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("evaluate", help="score a model against real cells, beside baselines")
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
    b.add_argument("-n", type=int, default=20000, help="cells for the speed run")
    b.add_argument("--big-n", type=int, default=100000, help="cells for the memory run (0: skip)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--device", default="cpu")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PerturbStudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
