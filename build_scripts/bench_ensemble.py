"""Generation speed of an ensemble against a single member of the same model (issue 10).

    python build_scripts/bench_ensemble.py [--model kang-ifnb-pbmc] [-n 20000] [--repeats 3]

Loads a shipped ensemble (K members), makes a one-member copy in memory (member 0 alone, same
autoencoder, same everything else), and times generating ``n`` cells end to end (flow sampling,
decoding, NB counts, AnnData assembly; no file) with each, interleaved, ``repeats`` times, on 2
CPU threads. The machine is shared and noisy: compare the ratio of the medians measured in one
run, not the absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch

    from engine import Condition, PerturbModel

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="kang-ifnb-pbmc")
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ens = PerturbModel.load(args.model, device="cpu")
    one = copy.copy(ens)
    one.nets = ens.nets[:1]
    one.net = one.nets[0]
    space = ens.space
    cond = Condition.make(space.cell_types[0] if space.cell_types else None)
    cond = ens.check_condition(cond)
    ens.generate(cond, 2000, seed=0)                   # warm-up (allocations, first calls)
    one.generate(cond, 2000, seed=0)
    times: dict[str, list[float]] = {"ensemble": [], "one member": []}
    for r in range(args.repeats):
        for name, m in (("ensemble", ens), ("one member", one)) if r % 2 == 0 else \
                (("one member", one), ("ensemble", ens)):
            t0 = time.perf_counter()
            m.generate(cond, args.n, seed=r)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": ens.name, "members": ens.members, "cells": args.n,
           "threads": args.threads, "condition": cond.label,
           "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
           "cells_per_s_median": {k: round(args.n / v) for k, v in med.items()},
           "ensemble_time_over_one_member": round(med["ensemble"] / med["one member"], 3)}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
