"""Train variants of one shipped model on its card split and score them the way the cards do.

    python build_scripts/ablation.py crispr-k562-glioblastoma [--variants default posterior_means]

Same data, 80/20 split, seed and evaluation as build_scripts/train_models.py; only the training
options differ. Prints one block per variant (held-out means over the card's condition groups)
and, with --json, writes every per-condition result. Used to choose the engine's defaults:
what wins here is what ships.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# variant name -> (backbone, training options on top of the shipped model's)
VARIANTS = {
    "default": ("mlp", {}),
    "ae_600_steps": ("mlp", {"ae_max_steps": 600, "ae_epochs": None, "ae_max_epochs": 200}),
    "posterior_means": ("mlp", {"latent_sampling": False}),
    "gene_cell_dispersion": ("mlp", {"dispersion": "gene-cell"}),
    "transformer": ("transformer", {}),
}


def main(argv=None) -> int:
    import torch

    from build_scripts.train_models import MODELS, TRAIN, evaluate_model
    from engine import train_model
    from engine.evaluate import clear_effects, split

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--json", type=Path)
    p.add_argument("--save", type=Path, help="also write each variant's model to SAVE/<variant>")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    adata, schema, _ = MODELS[args.model]()
    train, test = split(schema.filter(adata), schema)
    n_de = clear_effects(train, schema)
    out = {}
    for name in args.variants:
        backbone, kw = VARIANTS[name]
        t0 = time.perf_counter()
        model = train_model(train, schema, args.save / name if args.save else None, seed=0,
                            device="cpu", backbone=backbone, **{**TRAIN.get(args.model, {}), **kw})
        train_s = time.perf_counter() - t0
        results, summary, _ = evaluate_model(model, test, schema, n_de, reference=train)
        out[name] = {"train_s": round(train_s, 1), "summary": summary, "results": results}
        print(f"== {args.model} | {name} | trained in {train_s:.0f} s", flush=True)
        for r in summary:
            vals = " ".join(f"{m}={r[m]:.3f}" for m in ("r2_top100", "pearson_delta_top100",
                                                         "energy_ratio") if r.get(m) is not None)
            paired = r.get("paired_model")
            extra = "" if not paired or r["method"] == "real_train" else (
                "  [model on the same: " + " ".join(
                    f"{paired[m]:.3f}" for m in ("r2_top100", "pearson_delta_top100",
                                                 "energy_ratio") if m in paired) + "]")
            print(f"   {r['group']:<52} {r['method']:<10} n={r['n']:<3} {vals}{extra}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
