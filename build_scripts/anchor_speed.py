"""Generation speed of a new-cell-type condition with the latent baseline (engine.anchor) and
with the flow alone, on one Kang fold model.

    python build_scripts/kang_loo.py --members 1 --cell-types CD4T --save-models FOLDS
    python build_scripts/anchor_speed.py FOLDS/CD4T CD4T [--threads 1] [-n 5000]

Prints cells/s for both, twice, alternating (docs/results/anchor_speed.txt).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch

    from engine import Condition, PerturbModel

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", type=Path)
    p.add_argument("cell_type")
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = PerturbModel.load(args.model, device="cpu")
    cond = Condition.parse(args.cell_type, "stimulated", context="organism=human,tissue=blood")
    if m.anchor_for(cond) is None:
        raise SystemExit(f"{args.model}: {cond.label} is not drawn from the latent baseline "
                         "(no sampling.anchor, or the condition was measured)")
    g = m.guidance_for(cond)
    m.generate(cond, 500)                                    # warm-up
    for _ in range(2):
        for anchor in (None, False):
            t0 = time.perf_counter()
            m.generate(cond, args.n, anchor=anchor)
            dt = time.perf_counter() - t0
            what = "anchored" if anchor is None else f"flow alone g={g:g}"
            print(f"{what} {args.n / dt:,.0f} cells/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
