"""Training from disk at 0.5 M, 2 M and 5 M cells: peak memory and cells per second.

Each size is trained in its own child process (``--child``), streaming, with a short fixed
budget, so its peak resident memory (``os.wait4`` rusage ``ru_maxrss``) is its own. The child
reports the time of every phase (scan, autoencoder, encoding, flow, reference) and the
throughput: autoencoder cells/s = steps x batch / autoencoder seconds, flow cells/s likewise.

    PYTHONPATH=$PWD .venv/bin/python build_scripts/make_large.py --out /work/large
    PYTHONPATH=$PWD .venv/bin/python build_scripts/bench_scale.py --threads 1 \
        /work/large/kang_resampled_500k.h5ad /work/large/kang_resampled_2M.h5ad \
        /work/large/kang_resampled_5M.h5ad

``--readers FILE`` instead times the two ways to read minibatch pools from a backed h5ad:
anndata's backed mode (``read_h5ad(backed="r").X[rows]``) and h5py on the CSR arrays
(:class:`engine.data.stream.H5adCounts`). On a CUDA machine the child trains on the GPU
(``--device auto``) and reports cells/s there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(path: str, ae_steps: int, flow_steps: int, threads: int, device: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from engine.data.schema import Schema
    from engine.data.stream import BackedDataset
    from engine.train import train_model

    marks: dict[str, float] = {}
    last: dict[str, float] = {}
    t0 = time.perf_counter()

    def progress(p):
        now = time.perf_counter() - t0
        marks.setdefault(p.phase, now)
        last[p.phase] = now

    ds = BackedDataset.open(path)
    marks["open"] = time.perf_counter() - t0
    schema = Schema(cell_type_key="cell_type", perturbation_key="condition",
                    control_label="control")
    with tempfile.TemporaryDirectory() as tmp:
        model = train_model(ds, schema, Path(tmp) / "m", seed=0, device=device,
                            progress=progress, ae_steps=ae_steps, flow_steps=flow_steps,
                            members=1, scale_budget=False)
        total = time.perf_counter() - t0
    tr = model.config["training"]
    ae_s = last["autoencoder"] - marks["autoencoder"]
    flow_s = last["flow"] - marks["flow"]
    out = {"file": path, "n_cells": tr["n_cells"], "n_genes": tr["n_genes"],
           "device": tr["device"], "threads": threads, "ae_steps": ae_steps,
           "flow_steps": flow_steps, "seconds_total": round(total, 1),
           "seconds_open": round(marks["open"], 1),
           "seconds_scan": round(marks["autoencoder"] - marks["open"], 1),
           "seconds_autoencoder": round(ae_s, 1),
           "seconds_encode": round(marks["flow"] - last["autoencoder"], 1),
           "seconds_flow": round(flow_s, 1),
           "seconds_reference_and_save": round(total - last["flow"], 1),
           "ae_cells_per_s": round(ae_steps * 256 / ae_s),
           "encode_cells_per_s": round(tr["n_cells"] / max(marks["flow"] - last["autoencoder"],
                                                           1e-9)),
           "flow_cells_per_s": round(flow_steps * 256 / flow_s)}
    print("RESULT " + json.dumps(out), flush=True)


def run(path: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, __file__, "--child", path, "--ae-steps", str(args.ae_steps),
           "--flow-steps", str(args.flow_steps), "--threads", str(args.threads),
           "--device", args.device]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    text = p.stdout.read()
    if status != 0:
        raise SystemExit(f"{path}: child failed ({status}):\n{text[-2000:]}")
    res = json.loads(next(line for line in text.splitlines()
                          if line.startswith("RESULT "))[7:])
    res["peak_rss_gb"] = round(usage.ru_maxrss * 1024 / 1e9, 2)       # ru_maxrss is in KiB
    res["file_gb"] = round(Path(path).stat().st_size / 1e9, 2)
    return res


def readers(path: str, pools: int = 20, block: int = 64, pool_blocks: int = 128) -> None:
    import anndata as ad
    import numpy as np

    from engine.data.stream import H5adCounts

    rng = np.random.default_rng(0)
    h = H5adCounts(path)
    n = h.n_obs
    plans = []
    for _ in range(pools):
        starts = np.sort(rng.choice(n // block, pool_blocks, replace=False)) * block
        plans.append(np.concatenate([np.arange(s, s + block) for s in starts]))
    t = time.perf_counter()
    cells = sum(h.take(r).shape[0] for r in plans)
    h5 = time.perf_counter() - t
    a = ad.read_h5ad(path, backed="r")
    t = time.perf_counter()
    cells_b = sum(a.X[r].shape[0] for r in plans)
    backed = time.perf_counter() - t
    out = {"file": path, "pools": pools, "cells_per_pool": block * pool_blocks,
           "h5py_cells_per_s": round(cells / h5),
           "anndata_backed_cells_per_s": round(cells_b / backed)}
    try:                      # scdataset, when importable (pip install scdataset; not a dependency)
        from scdataset import BlockShuffling, scDataset

        class Rows:           # anndata's backed X, sized for scdataset
            def __len__(self):
                return n

            def __getitem__(self, idx):
                return a.X[np.sort(np.asarray(idx))]

        d = scDataset(Rows(), BlockShuffling(block_size=block), batch_size=256,
                      fetch_factor=block * pool_blocks // 256, seed=0)
        t, got = time.perf_counter(), 0
        for batch in d:
            got += batch.shape[0]
            if got >= cells:
                break
        out["scdataset_anndata_backed_cells_per_s"] = round(got / (time.perf_counter() - t))
    except ImportError:
        out["scdataset"] = "not installed"
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*")
    p.add_argument("--child")
    p.add_argument("--readers")
    p.add_argument("--ae-steps", type=int, default=1000)
    p.add_argument("--flow-steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.child:
        child(a.child, a.ae_steps, a.flow_steps, a.threads, a.device)
        return
    if a.readers:
        readers(a.readers)
        return
    rows = []
    for f in a.files:
        r = run(f, a)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if a.out:
        a.out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
