"""Generation benchmark: cells/s end to end (sampling, decoding, NB counts; no file writing) and
peak memory for a large run, measured in a fresh subprocess so earlier runs do not count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .errors import PerturbStudioError, ResourceError


def _first_condition(model):
    from .conditions.spec import Condition, Perturbation

    sp = model.space
    ct = sp.cell_types[0] if sp.cell_types else None
    perts = []
    if sp.targets:
        t = sp.targets[0]
        perts = [Perturbation(t, (sp.target_types.get(t) or [None])[0])]
    ctx = {lv: sp.context_values[lv][0] for lv in sp.context_levels}
    return model.space.complete(Condition.make(ct, perts, ctx))


def _speed(model_name: str, n: int, threads: int, device: str) -> dict:
    import torch

    from .model import PerturbModel

    torch.set_num_threads(threads)
    model = PerturbModel.load(model_name, device=device)
    cond = _first_condition(model)
    model.generate(cond, 512, seed=1)                       # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    adata = model.generate(cond, n, seed=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"model": model.name, "genes": len(model.genes), "device": str(model.device),
            "threads": threads, "condition": cond.label, "cells": n, "seconds": round(dt, 2),
            "cells_per_s": round(n / dt), "steps": model.default_steps,
            "guidance": model.default_guidance,
            "nonzero_fraction": round(adata.layers["counts"].nnz / (n * len(model.genes)), 4)}


def train_speed(device: str = "cpu", *, threads: int = 2, genes: int = 5000, steps: int = 50,
                batch: int = 256) -> dict:
    """Autoencoder training throughput (cells/s) of the default architecture on ``genes``
    genes: ``steps`` optimiser steps on random counts after 5 warm-up steps, bf16 autocast on
    CUDA (the NB likelihood stays fp32), as :func:`engine.train.fit_autoencoder` runs them."""
    import torch

    from .models.autoencoder import NBAutoencoder
    from .train import _autocast

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ae = NBAutoencoder(genes).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((batch, genes), 0.05)).add_(
        torch.randint(0, 2, (batch, genes), generator=gen)).to(device)
    amp = device.startswith("cuda") and torch.cuda.is_bf16_supported()

    def step():
        with _autocast(device, amp):
            loss, _ = ae.loss(x, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"device": device, "genes": genes, "batch": batch, "steps": steps,
            "mixed_precision": "bf16" if amp else "fp32",
            "train_cells_per_s": round(steps * batch / dt)}


def _peak_memory_child(model_name: str, n: int, threads: int, device: str) -> dict:
    code = ("import json,resource,sys,time;from engine.bench import _speed;"
            f"r=_speed({model_name!r},{n},{threads},{device!r});"
            "r['peak_rss_mb']=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024);"
            "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {out.returncode}"
        if out.returncode < 0 or "MemoryError" in last or "ResourceError" in last:
            raise ResourceError(f"the {n:,}-cell memory run stopped: {last[:300]}; try a "
                                "smaller --big-n")
        raise PerturbStudioError(f"the {n:,}-cell memory run failed: {last[:300]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_args(n, threads, big_n) -> None:
    for name, v, lo in (("--n", n, 1), ("--threads", threads, 1), ("--big-n", big_n, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise PerturbStudioError(f"bench {name} must be a whole number >= {lo}, got {v!r}")
    if threads > (os.cpu_count() or 1) * 4:
        raise PerturbStudioError(f"bench --threads {threads} is more than 4x the "
                                 f"{os.cpu_count()} CPU cores of this machine")


def run_bench(*, model: str = "kang-ifnb-pbmc", n: int = 20000, threads: int = 2,
              device: str = "cpu", big_n: int = 100000, train: bool = False) -> dict:
    """Generation speed and memory; with ``train`` also the autoencoder training throughput
    (:func:`train_speed`) on the CPU and, when one is present, on the GPU."""
    import torch

    _check_args(n, threads, big_n)
    res = _speed(model, n, threads, device)
    out = {f"cpu_{k}" if k in ("cells_per_s", "seconds") else k: v for k, v in res.items()}
    if big_n:
        big = _peak_memory_child(model, big_n, threads, device)
        out.update({"big_run_cells": big_n, "big_run_seconds": big["seconds"],
                    "big_run_cells_per_s": big["cells_per_s"],
                    "big_run_peak_rss_mb": big["peak_rss_mb"]})
    if torch.cuda.is_available() and device == "cpu":
        gpu = _speed(model, max(n, 100000), threads, "cuda")
        out.update({"gpu": torch.cuda.get_device_name(0), "gpu_cells_per_s": gpu["cells_per_s"]})
    else:
        out["gpu"] = "none available"
    if train:
        out["train_cpu_cells_per_s"] = train_speed("cpu", threads=threads)["train_cells_per_s"]
        if torch.cuda.is_available():
            g = train_speed("cuda", threads=threads, steps=200)
            out["train_gpu_cells_per_s"] = g["train_cells_per_s"]
            out["train_gpu_precision"] = g["mixed_precision"]
    return out
