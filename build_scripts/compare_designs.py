"""Compare design choices on one held-out Kang group (default: CD14+Mono stimulated).

Trains one model per variant (same data, seed, budget: the shipped Kang schedule, one flow
network) and prints held-out scores (de novo, guidance 1), training time and generation speed
(cells/s, ``--threads``, 2 by default). Each variant is scored twice: the flow alone (guidance
1, as before the latent baseline) and with the shipped Kang model's anchor rule
(docs/results/anchor.json: the type's control cells plus the kernel-weighted latent effect of
stimulation in the other types, refined by the flow; rows "anchored").

    python build_scripts/compare_designs.py [--cell-type CD14+Mono] [--json out.json]
        [--variants mlp ssm pathway] [--threads 2]

``--variants`` picks variants by a short name (mlp transformer ssm pathway ddpm
posterior-means; default: all). Each variant trains
exactly what build_scripts/kang_loo.py trains for that cell type with ``--members 1`` (same
exclusion, seed and schedule), so its scores equal that fold's de novo, guidance-1 row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "mlp + rectified flow (default)": dict(backbone="mlp"),
    "transformer + rectified flow": dict(backbone="transformer"),
    "ssm (selective state space over latent tokens) + rectified flow": dict(backbone="ssm"),
    "pathway tokens (transformer over gene-set tokens) + rectified flow":
        dict(backbone="pathway-transformer"),
    "mlp + DDPM (cosine, DDIM sampling)": dict(backbone="mlp", objective="ddpm"),
    "mlp + rectified flow on posterior means (before 0.2)": dict(backbone="mlp",
                                                                  latent_sampling=False),
}
#: --variants names, in the order of VARIANTS
SHORT = dict(zip(("mlp", "transformer", "ssm", "pathway", "ddpm", "posterior-means"), VARIANTS,
                 strict=True))


def main(argv=None) -> int:
    import torch

    from build_scripts.train_models import TRAIN, anchor_rule, kang
    from engine import Condition, train_model
    from engine.evaluate import evaluate

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cell-type", default="CD14+Mono")
    p.add_argument("--json", type=Path)
    p.add_argument("--variants", nargs="*", choices=list(SHORT),
                   help="the variants to run (default: all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {SHORT[k]: VARIANTS[SHORT[k]] for k in (args.variants or SHORT)}
    adata, schema, _ = kang()
    cond = Condition.parse(args.cell_type, "stimulated")
    rows = []
    for name, kw in variants.items():
        kw = dict(kw)
        backbone = kw.pop("backbone")
        t0 = time.perf_counter()
        model = train_model(adata, schema, None, seed=0, device="cpu", backbone=backbone,
                            anchor=False,                   # the first row: the flow alone
                            exclude=[{"cell_type": args.cell_type, "condition": "stimulated"}],
                            **{**TRAIN["kang-ifnb-pbmc"], "members": 1, **kw})
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(cond, 5000, seed=0)
        speed = 5000 / (time.perf_counter() - t0)
        r = evaluate(model, adata, schema, cond, mode="denovo", seed=0)
        m = r.row("model")
        rows.append({"variant": name, "train_s": round(train_s), "cells_per_s": round(speed),
                     **{k: m[k] for k in ("r2_top100", "pearson_delta_top100", "energy_ratio")}})
        print(json.dumps(rows[-1]), flush=True)
        rule = anchor_rule("kang-ifnb-pbmc")
        if rule and model.config.get("latent_means"):
            model.config["sampling"]["anchor"] = rule
            assert model.anchor_for(cond) is not None, cond.label
            t0 = time.perf_counter()
            model.generate(cond, 5000, seed=0)
            speed = 5000 / (time.perf_counter() - t0)
            m = evaluate(model, adata, schema, cond, mode="denovo", seed=0).row("model")
            rows.append({"variant": name + ", anchored", "train_s": round(train_s),
                         "cells_per_s": round(speed), **{k: m[k] for k in (
                             "r2_top100", "pearson_delta_top100", "energy_ratio")}})
            print(json.dumps(rows[-1]), flush=True)
    base = r.row("mean_shift")
    print(f"mean_shift baseline: r2_top100 {base['r2_top100']}, pearson_delta_top100 "
          f"{base['pearson_delta_top100']}, energy_ratio {base['energy_ratio']}")
    print("\n| variant | train s | cells/s | R2 top100 | Pearson delta top100 | energy ratio |")
    print("|---|---|---|---|---|---|")
    for r_ in rows:
        print(f"| {r_['variant']} | {r_['train_s']} | {r_['cells_per_s']} | {r_['r2_top100']} | "
              f"{r_['pearson_delta_top100']} | {r_['energy_ratio']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
