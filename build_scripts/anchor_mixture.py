"""Would a mixture of the anchored and the flow-alone cells do better on a new cell type?
(issue 14, a variant tried and not kept)

On Kang's one-network leave-one-cell-type-out fold models, de novo, N cells of the held-out
type's "stimulated" condition are drawn with the shipped anchor rule (docs/results/anchor.json)
and N with the flow alone (the shipped guidance for new cell types); scored alone and as
mixtures (half and half; three quarters anchored) against the real held-out cells.

    python build_scripts/kang_loo.py --members 1 --guidance 2 --save-models FOLDS
    python build_scripts/anchor_mixture.py FOLDS [--n 1000]

Output kept in docs/results/anchor_mixture.txt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CELL_TYPES = ["B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"]
KEYS = ("r2_top100", "pearson_delta_top100", "energy_ratio")


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import (
        anchor_rule,
        guidance_by_evidence,
        kang,
        kang_fold_parser,
        kang_labels,
        load_kang_fold,
    )
    from engine import Condition
    from engine.data.io import get_counts
    from engine.evaluate import fit_pca, lognorm, score

    p = kang_fold_parser(__doc__, cell_types=False)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata, schema, _ = kang()
    ctype, stim = kang_labels(adata)
    n = args.n
    res = {}
    for ct in CELL_TYPES:
        model = load_kang_fold(args.folds, ct, adata, schema)
        model.config["sampling"]["anchor"] = anchor_rule("kang-ifnb-pbmc")
        model.config["sampling"]["guidance_by_evidence"] = guidance_by_evidence("kang-ifnb-pbmc")
        counts = get_counts(adata)[0].tocsr()[:, model.gene_mapping(adata).index]
        counts = counts.astype(np.float32)
        X_t, X_c = lognorm(counts[(ctype == ct) & stim]), lognorm(counts[(ctype == ct) & ~stim])
        degs = np.argsort(-np.abs(X_t.mean(0) - X_c.mean(0)))[:100]
        pca = fit_pca(counts)
        cond = Condition.parse(ct, "stimulated")
        a = lognorm(model.generate(cond, n, seed=0).layers["counts"])
        f = lognorm(model.generate(cond, n, seed=0, anchor=False).layers["counts"])
        preds = {"anchored": a, "flow alone": f,
                 "mixture 1/2 anchored": np.concatenate([a[: n // 2], f[: n // 2]]),
                 "mixture 3/4 anchored": np.concatenate([a[: 3 * n // 4], f[: n // 4]])}
        res[ct] = {k: {m: round(float(v), 3) for m, v in score(x, X_t, X_c, degs, pca).items()
                       if m in KEYS} for k, x in preds.items()}
        print(f"{ct:<12} " + "  ".join(f"{k}: {res[ct][k]['r2_top100']:.3f}" for k in preds),
              flush=True)
    print("\nmeans over the 7 folds (de novo):")
    for k in res[CELL_TYPES[0]]:
        print(f"{k:<22} " + "  ".join(
            f"{m} {np.mean([res[c][k][m] for c in CELL_TYPES]):.3f}" for m in KEYS))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
