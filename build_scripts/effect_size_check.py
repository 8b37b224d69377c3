"""Is a new cell type's predicted effect too small, too large or the wrong way? (issue 14)

For each fold model of ``kang_loo.py --save-models FOLDS`` (trained without one cell type's
stimulated cells; the shipped Kang anchor rule of docs/results/anchor.json), the predicted effect of stimulation
(engine.effects.predict_effects, 2,000 cells) against the real effect in the held-out cells,
on the real effect's top-100 genes: median |predicted| / |real|, the share of genes whose
predicted change is smaller than the real one, and the share with the right sign.

    python build_scripts/effect_size_check.py FOLDS [--cell-types ...]

Output: docs/results/effect_size_check.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import anchor_rule, kang, kang_fold_parser, load_kang_fold
    from engine import Condition
    from engine.effects import predict_effects, real_effect

    args = kang_fold_parser(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    adata, schema, _ = kang()
    print(f"{'cell type':<12} {'median |pred|/|real|':>21} {'share smaller':>14} "
          f"{'right sign':>11}")
    for ct in args.cell_types:
        model = load_kang_fold(args.folds, ct)
        model.config["sampling"]["anchor"] = anchor_rule("kang-ifnb-pbmc")
        cond = Condition.parse(ct, "stimulated", context="organism=human,tissue=blood")
        pred = predict_effects(model, cond, n=2000, seed=0)
        real = real_effect(model, adata, schema, cond, min_cells=3)
        top = np.argsort(-np.abs(real.effect))[:100]
        pe, re = pred.effect[top], real.effect[top]
        print(f"{ct:<12} {np.median(np.abs(pe) / np.abs(re)):>21.2f} "
              f"{np.mean(np.abs(pe) < np.abs(re)):>14.2f} "
              f"{np.mean(np.sign(pe) == np.sign(re)):>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
