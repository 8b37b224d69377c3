"""Memory guard accuracy: predicted vs measured peak memory of generating and writing cells.

For each size, a fresh subprocess loads the model, notes its resident memory (the baseline),
resets the peak (``/proc/self/clear_refs``; without it the peak of ``getrusage`` is used),
generates the cells of one condition, writes them (h5ad by default) to a temporary folder and
reports the peak resident memory above the baseline. The prediction is the guard's own estimate
(:func:`engine.memory.generation_estimate`) for the same run and output format; "guard" is what
``generate`` itself checks before starting (the larger of the h5ad and CSV writes).

    .venv/bin/python build_scripts/bench_memory_guard.py              # 10k, 100k, 1M cells
    .venv/bin/python build_scripts/bench_memory_guard.py --sizes 10000 --write csv --no-save
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "memory_guard.txt"


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def child(model_name: str, n: int, threads: int, write: str, tmp: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from engine.bench import _first_condition
    from engine.export import write_csv, write_h5ad
    from engine.memory import generation_estimate
    from engine.model import PerturbModel

    model = PerturbModel.load(model_name, device="cpu")
    cond = _first_condition(model)
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                   # reset VmHWM to the current RSS
        method = "VmHWM after reset - VmRSS after model load"
    except OSError:
        method = "ru_maxrss - VmRSS after model load"
    if base is None:
        base, method = _peak_rss(), "ru_maxrss - ru_maxrss after model load"
    kw = dict(batch_size=model._batch_size(), latent_dim=model.latent_dim)
    pred = generation_estimate(n, len(model.genes), model.density, write=write, **kw)
    guard = generation_estimate(n, len(model.genes), model.density, write="any", **kw)
    t0 = time.perf_counter()
    adata = model.generate(cond, n, seed=0)
    t_gen = time.perf_counter() - t0
    peak_gen = _peak_rss() - base
    t0 = time.perf_counter()
    if write == "h5ad":
        write_h5ad(adata, Path(tmp) / "cells.h5ad")
    elif write == "csv":
        write_csv(adata, Path(tmp) / "cells.csv")
    t_write = time.perf_counter() - t0
    peak = _peak_rss() - base
    nnz = adata.layers["counts"].nnz
    return {"cells": n, "genes": len(model.genes), "nnz": int(nnz),
            "density_model": round(model.density, 4),
            "density_generated": round(nnz / (n * len(model.genes)), 4),
            "predicted": pred.total, "guard": guard.total, "measured": int(peak),
            "measured_generate": int(peak_gen), "parts": pred.parts, "baseline": int(base),
            "seconds_generate": round(t_gen, 1), "seconds_write": round(t_write, 1),
            "method": method, "condition": cond.label}


def run_one(model: str, n: int, threads: int, write: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        code = (f"import json,sys;sys.path.insert(0,{str(ROOT)!r});"
                "from build_scripts.bench_memory_guard import child;"
                f"print(json.dumps(child({model!r},{n},{threads},{write!r},{tmp!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"the run with {n:,} cells failed (exit {out.returncode}):\n"
                             + out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], write: str) -> str:
    mib = 2**20
    head = (f"{'cells':>10} {'nnz':>12} {'predicted MiB':>14} {'measured MiB':>13} "
            f"{'pred/meas':>9} {'guard MiB':>10} {'gen-only MiB':>12} {'gen s':>7} {'write s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['cells']:>10,} {r['nnz']:>12,} {r['predicted'] / mib:>14,.0f} "
                     f"{r['measured'] / mib:>13,.0f} {r['predicted'] / r['measured']:>9.2f} "
                     f"{r['guard'] / mib:>10,.0f} {r['measured_generate'] / mib:>12,.0f} "
                     f"{r['seconds_generate']:>7.1f} {r['seconds_write']:>7.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="papalexi-thp1-ko")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", choices=("h5ad", "csv", "none"), default="h5ad")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        r = run_one(args.model, n, args.threads, args.write)
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "parts"}), flush=True)
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    worst = max(abs(r["predicted"] / r["measured"] - 1) for r in rows)
    text = "\n".join([
        "# Memory guard: predicted vs measured peak memory of generate + write "
        f"({args.write})",
        f"# build_scripts/bench_memory_guard.py --sizes {' '.join(map(str, args.sizes))} "
        f"--threads {args.threads} --write {args.write}",
        f"# model {args.model} ({rows[0]['genes']} genes, density {rows[0]['density_model']} in "
        f"the model, {rows[-1]['density_generated']} generated), condition "
        f"{rows[0]['condition']!r}, cpu, {args.threads} threads",
        f"# {rows[0]['method']}; each size in a fresh subprocess",
        f"# {dt.date.today()} commit {commit} python {platform.python_version()} torch "
        f"{torch.__version__} {platform.machine()} {platform.system()}",
        "# predicted: engine.memory.generation_estimate for this run and format; guard: what "
        "generate() checks (larger of h5ad/CSV write);",
        "# gen-only: measured peak before writing",
        "",
        table(rows, args.write),
        "",
        f"worst |predicted/measured - 1| = {worst:.1%}",
        "",
        "# parts of the prediction at the largest size (MiB):",
        *(f"#   {k}: {v / 2**20:,.0f}" for k, v in rows[-1]["parts"].items()),
        "",
    ])
    print(text)
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
