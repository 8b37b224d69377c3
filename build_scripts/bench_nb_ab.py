"""End-to-end generation speed with this checkout's NB sampler against the sampler of another
git revision (engine/models/autoencoder.py:sample_nb), alternating in one process so that the
shared machine's noise hits both alike. The shipped Kang model, 20,000 cells of B |
stimulated, 2 threads, ``--repeats`` rounds.

    python build_scripts/bench_nb_ab.py --rev REV [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import numpy as np
    import torch

    import engine.models.autoencoder as ae
    from engine import Condition, PerturbModel

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True, help="the git revision to compare with")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("-n", type=int, default=20_000)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    src = subprocess.run(["git", "show", f"{args.rev}:engine/models/autoencoder.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "autoencoder_rev.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("autoencoder_rev", path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    samplers = {args.rev: old.sample_nb, "this checkout": ae.sample_nb}
    model = PerturbModel.load("kang-ifnb-pbmc", device="cpu")
    cond = Condition.parse("B", "stimulated")
    model.generate(cond, 2000, seed=0)                        # warm up
    speed = {k: [] for k in samplers}
    try:
        for _ in range(args.repeats):
            for name, fn in samplers.items():
                ae.sample_nb = fn             # engine.model imports it at each decode
                t0 = time.perf_counter()
                model.generate(cond, args.n, seed=0)
                speed[name].append(args.n / (time.perf_counter() - t0))
    finally:
        ae.sample_nb = samplers["this checkout"]
    for name, v in speed.items():
        print(f"{name:<16} cells/s " + " / ".join(f"{x:,.0f}" for x in v)
              + f"  (median {np.median(v):,.0f})")
    print(f"ratio of medians: {np.median(speed['this checkout']) / np.median(speed[args.rev]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
