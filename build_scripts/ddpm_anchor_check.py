"""Why the latent baseline (engine.anchor) loses on a DDPM model (issue 14).

Trains the compare_designs.py DDPM variant without CD14+Mono stimulated (one network, anchor
off; or loads it from --model), then prints (1) CD14+Mono stimulated de novo with the flow
alone at guidance 1 and 2 and with kernel anchor rules at refine 0 / 0.2 / 0.5, and (2) how far
the mean latent state of 500 generated CD14+Mono control cells lies from the real cells' (mean
absolute difference over the latent dimensions, standardised units), for this model and for a
rectified-flow fold model given with --compare (e.g. FOLDS/CD14plusMono of kang_loo.py).

    python build_scripts/ddpm_anchor_check.py --model DIR [--compare FOLDS/CD14plusMono]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RULES = [dict(weights="kernel", refine=0.0, guidance=1.0),
         dict(weights="kernel", refine=0.2, guidance=1.0),
         dict(weights="kernel", refine=0.2, guidance=2.0),
         dict(weights="kernel", refine=0.5, guidance=1.0)]


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import TRAIN, kang
    from engine import Condition, PerturbModel, train_model
    from engine.evaluate import evaluate

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="where the DDPM model is (trained there first if missing)")
    p.add_argument("--compare", type=Path, help="a rectified-flow model of the same fold")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    adata, schema, _ = kang()
    if not (args.model / "config.json").is_file():
        train_model(adata, schema, args.model, seed=0, device="cpu", anchor=False,
                    exclude=[{"cell_type": "CD14+Mono", "condition": "stimulated"}],
                    **{**TRAIN["kang-ifnb-pbmc"], "members": 1, "objective": "ddpm"})
    model = PerturbModel.load(args.model, device="cpu")
    cond = Condition.parse("CD14+Mono", "stimulated")
    keys = ("r2_top100", "pearson_delta_top100", "energy_ratio")
    for rule in [None, *RULES]:
        model.config["sampling"].pop("anchor", None)
        if rule:
            model.config["sampling"]["anchor"] = {"kinds": ["new_cell_type"], **rule}
        for g in ([1.0, 2.0] if rule is None else [None]):
            m = evaluate(model, adata, schema, cond, mode="denovo", seed=0, guidance=g)
            m = m.row("model")
            name = f"flow alone g={g:g}" if rule is None else \
                f"anchored kernel refine={rule['refine']:g} g={rule['guidance']:g}"
            print(f"{name:<36} " + "  ".join(f"{k} {m[k]:.3f}" for k in keys), flush=True)
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    stim = adata.obs["condition"].astype(str).to_numpy() == "stimulated"
    cells = adata[(ct == "CD14+Mono") & ~stim]
    for path in [args.model, args.compare]:
        if path is None:
            continue
        m = PerturbModel.load(path, device="cpu")
        real = m.encode(cells).mean(0)
        gen = m.encode(m.generate(Condition.parse("CD14+Mono", "control"), 500, seed=0)).mean(0)
        print(f"{m.config['architecture']['objective']:<15} generated vs real CD14+Mono control "
              f"cells, mean |latent mean difference|: {np.abs(gen - real).mean():.3f}  ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
