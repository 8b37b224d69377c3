"""Data-parallel check: 2 CPU processes (torchrun, gloo) against 1 process, same total budget.

Kang 2018 (``../shared/data/kang2018_ifnb_pbmc_train.h5ad``), one stratified 20 % hold-out (split
seed 0, the same for every run), one flow member. The 2-process run takes the same number of
steps with the same global minibatch (each rank 128 of the 256 cells of every step, gradients
averaged), so it should land where the 1-process run does; the spread of 1-process runs with
different training seeds is the noise it is compared with. Scores are the held-out ones of
``engine.assess.assess`` (the card's "model" row: means over the perturbed conditions).

    PYTHONPATH=$PWD .venv/bin/python build_scripts/ddp_check.py --threads 1 \
        --out docs/results/ddp_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PERTURB_STUDIO_DATA", ROOT.parent / "shared" / "data"))
KANG = DATA / "kang2018_ifnb_pbmc_train.h5ad"


def worker(seed: int, ae_steps: int, flow_steps: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from engine.assess import assess
    from engine.data.io import read_dataset
    from engine.data.schema import guess_schema
    from engine.distributed import init_from_env, shutdown
    from engine.evaluate import split
    from engine.train import train_model

    dist = init_from_env("cpu")
    adata = read_dataset(KANG)
    schema = guess_schema(adata)
    train, test = split(schema.filter(adata), schema, frac=0.2, seed=0)
    t0 = time.perf_counter()
    model = train_model(train, schema, None, seed=seed, device="cpu", dist=dist,
                        ae_steps=ae_steps, flow_steps=flow_steps, members=1,
                        scale_budget=False)
    seconds = time.perf_counter() - t0
    if dist.main:
        judged = assess(model, train, test, schema, seed=0)
        row = next(r for r in judged["metrics"] if r["method"] == "model")
        print("RESULT " + json.dumps({"world_size": dist.world, "seed": seed,
                                      "train_seconds": round(seconds, 1), **row}), flush=True)
    dist.barrier()
    shutdown(dist)


def launch(world: int, seed: int, a) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    tail = [str(Path(__file__).resolve()), "--worker", "--seed", str(seed),
            "--ae-steps", str(a.ae_steps), "--flow-steps", str(a.flow_steps),
            "--threads", str(a.threads)]
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", str(world),
                               "--master_port", str(29600 + seed)] if world > 1 else []) + tail
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"world {world} seed {seed} failed:\n{r.stderr[-3000:]}")
    return json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="training seeds of the 1-process runs (their spread is the noise)")
    p.add_argument("--ddp-seeds", type=int, nargs="+", default=[0],
                   help="training seeds of the 2-process runs")
    p.add_argument("--ae-steps", type=int, default=800)
    p.add_argument("--flow-steps", type=int, default=800)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.worker:
        worker(a.seed, a.ae_steps, a.flow_steps, a.threads)
        return
    rows = []
    runs = [(1, s) for s in a.seeds] + [(2, s) for s in a.ddp_seeds]
    for world, seed in runs:
        r = launch(world, seed, a)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
