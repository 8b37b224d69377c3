"""Leave-one-double-out on the CRISPR training file (issue 14).

Every K562 double whose two singles were also measured in K562 is held out on its own (one
model per double, trained on everything else) and predicted de novo and by perturbing K562
control cells, against the additive baseline (the sum of the two single effects). The file's
other doubles lack at least one measured single, so no additive baseline exists for them and
they stay in training (listed in the output).

    python build_scripts/crispr_lodo.py [--members 1] [--threads 1] [--json out.json]

Unlike build_scripts/crispr_heldout.py (all three doubles out of one model), each model here
still sees the other doubles, as a user's model would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def eligible_doubles(adata, cell_type: str = "k562") -> tuple[list[str], list[str]]:
    """(doubles with both singles measured in ``cell_type``, the other doubles there)."""
    obs = adata.obs[adata.obs["cell_type"].astype(str) == cell_type]
    labels = sorted(set(obs["condition"].astype(str)))
    singles = {c for c in labels if "+" not in c}
    doubles = [c for c in labels if "+" in c]
    ok = [d for d in doubles if all(p in singles for p in d.split("+"))]
    return ok, [d for d in doubles if d not in ok]


def variants(args) -> list[tuple[float, float | None, str | None]]:
    """(guidance, anchor refine or None for the flow alone, anchor match) to score."""
    out = []
    for g in args.guidance:
        out.append((g, None, None))
        out += [(g, s, m) for s in args.anchor_refine for m in args.anchor_match]
    return out


def tag_of(s: float | None, match: str | None) -> str:
    if s is None:
        return "flow alone"
    return f"anchored s={s:g}" + ("" if match == "latent" else f" {match}")


def scored(model, adata, schema, cond, mode: str, guidance, splits: int,
           baseline: str = "additive") -> tuple[dict, dict]:
    """The model's and ``baseline``'s rows of engine.evaluate: one run with shared control
    cells (``splits`` 0), else the means over ``splits`` control splits
    (engine.evaluate.evaluate_splits, with each metric's standard deviation)."""
    from engine.evaluate import evaluate, evaluate_splits

    opts = dict(mode=mode, seed=0, guidance=guidance)
    r = evaluate_splits(model, adata, schema, cond, splits=splits, **opts) if splits else \
        evaluate(model, adata, schema, cond, **opts)
    return r.row("model"), r.row(baseline)


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import crispr, parse_override
    from engine import Condition, PerturbModel, train_model

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=1,
                   help="ensemble members per model (default 1: five models on 2 cores)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--guidance", type=float, nargs="*", default=[1.0])
    p.add_argument("--anchor-refine", type=float, nargs="*", default=[],
                   help="also score the additive latent baseline (engine.anchor, kinds "
                        "new_combination) refined from these flow times (0: pure latent "
                        "additive)")
    p.add_argument("--anchor-match", nargs="*", default=["latent"],
                   choices=["latent", "expression"],
                   help="where each anchored start matches the additive baseline: latent (the "
                        "singles' latent effects summed) and/or expression (a latent shift "
                        "whose decoded expression moves by the singles' summed expression "
                        "effects)")
    p.add_argument("--train", nargs="*", default=[], metavar="NAME=VALUE",
                   help="training overrides by ModelConfig's flat names (e.g. kl_weight=0.1), "
                        "to measure a training change on the same folds")
    p.add_argument("--control-splits", type=int, default=0, metavar="K",
                   help="score each variant K times, the K562 control cells split at random "
                        "(seeds 0..K-1) between the methods and the truth "
                        "(engine.evaluate control_split: no control cell on both sides of a "
                        "Pearson delta), and report the means; 0 (default): the issue's "
                        "convention, one shared set of control cells")
    p.add_argument("--json", type=Path)
    p.add_argument("--save-models", type=Path, metavar="DIR",
                   help="keep each fold's model in DIR/<double> (to score other rules later)")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="load the fold models saved by --save-models instead of training")
    args = p.parse_args(argv)
    overrides = dict(parse_override(t) for t in args.train)
    torch.set_num_threads(args.threads)
    adata, schema, _ = crispr()
    doubles, others = eligible_doubles(adata)
    print(f"{len(doubles)} doubles with both singles measured in K562: {', '.join(doubles)}")
    print(f"{len(others)} other doubles (a single missing; kept in training): "
          f"{', '.join(others)}", flush=True)
    rows = []
    for d in doubles:
        t0 = time.perf_counter()
        if args.models:
            model = PerturbModel.load(args.models / d)
        else:
            model = train_model(adata, schema, None, seed=0, device="cpu",
                                members=args.members, **overrides,
                                exclude=[{"condition": d, "cell_type": "k562"}])
            if args.save_models:
                model.save(args.save_models / d)
        train_s = time.perf_counter() - t0
        cond = Condition.parse("k562", d, "CRISPRa")
        for mode in ("denovo", "perturb"):
            for g, s, match in variants(args):
                model.config["sampling"].pop("anchor", None)
                if s is not None:
                    model.config["sampling"]["anchor"] = {"kinds": ["new_combination"],
                                                          "refine": s, "guidance": g,
                                                          "match": match}
                m, b = scored(model, adata, schema, cond, mode, None if s is not None else g,
                              args.control_splits)
                if s is not None:
                    assert model.anchor_for(cond) is not None, cond.label
                rows.append({"double": d, "mode": mode, "guidance": g, "train_s": round(train_s),
                             "anchor_refine": s, "anchor_match": match, "model": m,
                             "additive": b})
                tag = tag_of(s, match)
                print(f"{d:<18} {mode:<8} g={g:<4} {tag:<20} train {train_s:5.0f}s  "
                      f"R2top100 {m['r2_top100']:.3f} vs additive {b['r2_top100']:.3f} | "
                      f"Pearson-delta top100 {m['pearson_delta_top100']:.3f} vs "
                      f"{b['pearson_delta_top100']:.3f} | energy {m['energy_ratio']:.3f} vs "
                      f"{b['energy_ratio']:.3f}", flush=True)
    print("\nmeans:")
    for mode in ("denovo", "perturb"):
        for g, s, match in variants(args):
            sel = [r for r in rows if r["mode"] == mode and r["guidance"] == g
                   and r.get("anchor_refine") == s and r.get("anchor_match") == match]
            wins = sum(r["model"]["pearson_delta_top100"] >= r["additive"]["pearson_delta_top100"]
                       and r["model"]["r2_top100"] >= r["additive"]["r2_top100"] for r in sel)
            print(f"{mode:<8} g={g:<4} {tag_of(s, match):<20} " + "  ".join(
                f"{k} {np.mean([r['model'][k] for r in sel]):.3f} vs "
                f"{np.mean([r['additive'][k] for r in sel]):.3f}"
                for k in ("r2_top100", "pearson_delta_top100", "energy_ratio"))
                + f"  (model >= additive on both R2 and PD: {wins} of {len(sel)})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
