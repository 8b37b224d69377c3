"""Norman/McFaline CRISPR out-of-sample checks (one model, several held-out groups).

1. Doubles whose two singles were seen: KLF1+TGFBR2, MAP2K3+MAP2K6, MAP2K3+SLC38A2 (K562,
   CRISPRa) are removed from training and predicted; compared with the additive baseline.
2. A gene held out in one cell line but seen in the others: MAPK1 in A172, TGFBR2 in U87MG,
   MAP3K21 in T98G (CRISPRi) are removed and predicted; compared with mean shift.

    python build_scripts/crispr_heldout.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOUBLES = ["KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2"]
TRANSFER = [("MAPK1", "A172"), ("TGFBR2", "U87MG"), ("MAP3K21", "T98G")]


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import crispr
    from engine import Condition, train_model
    from engine.evaluate import evaluate

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", type=Path)
    p.add_argument("--guidance", type=float, nargs="*", default=[1.0, 2.0])
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    adata, schema, _ = crispr()
    exclude = [{"condition": d, "cell_type": "k562"} for d in DOUBLES]
    exclude += [{"condition": g, "cell_type": ct} for g, ct in TRANSFER]
    t0 = time.perf_counter()
    model = train_model(adata, schema, None, seed=0, device="cpu", exclude=exclude)
    print(f"trained in {time.perf_counter() - t0:.0f} s without {len(exclude)} groups")
    tasks = [("double vs additive", Condition.parse("k562", d, "CRISPRa"), "additive")
             for d in DOUBLES]
    tasks += [("gene in new cell line vs mean shift", Condition.parse(ct, g, "CRISPRi"),
               "mean_shift") for g, ct in TRANSFER]
    rows = []
    for kind, cond, base in tasks:
        for mode in ("denovo", "perturb"):
            for g in args.guidance:
                r = evaluate(model, adata, schema, cond, mode=mode, seed=0, guidance=g)
                m, b = r.row("model"), r.row(base)
                rows.append({"task": kind, "condition": cond.label, "mode": mode,
                             "guidance": g, "model": m, base: b, "baseline": base})
                print(f"{cond.label:<28} {mode:<8} g={g:<4} "
                      f"R2top100 {m['r2_top100']:.3f} vs {base} {b['r2_top100']:.3f} | "
                      f"Pearson-delta top100 {m['pearson_delta_top100']:.3f} vs "
                      f"{b['pearson_delta_top100']:.3f} | energy {m['energy_ratio']:.3f} vs "
                      f"{b['energy_ratio']:.3f}", flush=True)
    print("\nmeans:")
    for kind in dict.fromkeys(t[0] for t in tasks):
        for mode in ("denovo", "perturb"):
            for g in args.guidance:
                sel = [r for r in rows if r["task"] == kind and r["mode"] == mode
                       and r["guidance"] == g]
                base = sel[0]["baseline"]
                f = {k: (np.mean([r["model"][k] for r in sel]),
                         np.mean([r[base][k] for r in sel]))
                     for k in ("r2_top100", "pearson_delta_top100", "energy_ratio")}
                print(f"{kind:<38} {mode:<8} g={g:<4} " + "  ".join(
                    f"{k} {a:.3f} vs {b:.3f}" for k, (a, b) in f.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
