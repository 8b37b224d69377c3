"""Kang IFN-beta leave-one-cell-type-out benchmark (the classic out-of-sample task).

For each of the 7 cell types: train on the whole file minus that type's stimulated cells, then
predict them (de novo and by perturbing that type's real control cells) and score against the
real stimulated cells, beside the control and mean-shift baselines.

    python build_scripts/kang_loo.py [--cell-types CD4T B ...] [--json out.json]
        [--members K] [--ensemble-json docs/results/kang_loo_ensemble.json]

With an ensemble (the default, 5 members), each fold also predicts the effect of stimulation
with its 90% interval (engine.effects) and records how often the interval holds the real
effect on the top-100 DEGs (chosen on one random half of the held-out stimulated cells, scored
on the other half). ``--ensemble-json`` writes the "new cell type" row of the Kang
card's evidence table and its calibration factor: fitted on all folds, while the coverage it
reports is leave-one-fold-out (each fold scored with the factor fitted on the other folds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("PERTURB_STUDIO_DATA", ROOT / ".." / "shared" / "data"))
CELL_TYPES = ["B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"]


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.train_models import TRAIN, kang, load_kang_fold, parse_override
    from engine import Condition, train_model
    from engine.evaluate import evaluate, evaluate_splits

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cell-types", nargs="*", default=CELL_TYPES)
    p.add_argument("--json", type=Path)
    p.add_argument("--backbone", default="mlp")
    p.add_argument("--guidance", nargs="*", default=["auto"],
                   help="guidance scales to score, or 'auto' (default): the shipped model's "
                        "choice, i.e. its guidance per evidence class and its anchor rule "
                        "(docs/results/guidance_by_evidence.json, docs/results/anchor.json)")
    p.add_argument("--no-anchor", action="store_true",
                   help="the flow alone (no latent baseline, engine.anchor)")
    p.add_argument("--compare-flow", action="store_true",
                   help="also score the flow alone (anchor off) at each guidance: rows "
                        "'model_flow_alone'")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train", nargs="*", default=[], metavar="NAME=VALUE",
                   help="training overrides by ModelConfig's flat names (e.g. p_coarse=0.3), "
                        "on top of the shipped Kang model's")
    p.add_argument("--members", type=int, default=None,
                   help="ensemble members (default: the engine's default)")
    p.add_argument("--ensemble-json", type=Path,
                   help="write the card evidence + calibration for new cell types here")
    p.add_argument("--save-models", type=Path, metavar="DIR",
                   help="also save each fold's model as DIR/<cell type> (e.g. to look at it "
                        "in the app)")
    p.add_argument("--models", type=Path, metavar="DIR",
                   help="no training: score the fold models an earlier --save-models run kept "
                        "in DIR, with today's guidance table and anchor rule (train s: the "
                        "training time recorded in each model)")
    p.add_argument("--control-splits", type=int, default=0, metavar="K",
                   help="score every method as the mean over K random splits of the held-out "
                        "type's control cells between the methods and the truth "
                        "(engine.evaluate.evaluate_splits: no control cell on both sides of a "
                        "Pearson delta); 0 (default): one shared set, the issue's convention")
    p.add_argument("--summarise", type=Path, metavar="ROWS_JSON",
                   help="no training: rebuild --ensemble-json from the rows of an earlier run "
                        "(--json) and the records kept in --ensemble-json")
    args = p.parse_args(argv)
    args.guidance = [g if g == "auto" else float(g) for g in args.guidance]
    from build_scripts.train_models import anchor_rule, guidance_by_evidence
    from engine.effects import coverage_record, predict_effects, real_effect

    if args.summarise:
        rows = json.loads(args.summarise.read_text())
        records = json.loads(args.ensemble_json.read_text())["records"]
        ensemble_summary(rows, records, args)
        return 0
    torch.set_num_threads(args.threads)

    def score(*a, **kw):
        if args.control_splits:
            return evaluate_splits(*a, splits=args.control_splits, **kw)
        return evaluate(*a, **kw)

    adata, schema, _ = kang()
    rows, records = [], []
    for ct in args.cell_types:
        t0 = time.perf_counter()
        if args.models:                      # the fold models of an earlier --save-models run
            # (a fold saved before the latent group means were stored gets them from its
            # training cells: without them the anchor rule would silently not apply)
            model = load_kang_fold(args.models, ct, adata, schema)
            train_s = float((model.config.get("training") or {}).get("seconds") or 0.0)
        else:
            model = train_model(adata, schema, None, seed=0, device="cpu",
                                backbone=args.backbone,
                                exclude=[{"cell_type": ct, "condition": "stimulated"}],
                                **{**TRAIN["kang-ifnb-pbmc"],     # as the shipped Kang model
                                   **dict(parse_override(t) for t in args.train)},
                                **({"members": args.members} if args.members else {}))
            train_s = time.perf_counter() - t0
        # as the shipped Kang model: guidance per evidence class and the anchor rule
        model.config["sampling"]["guidance_by_evidence"] = guidance_by_evidence("kang-ifnb-pbmc")
        rule = None if args.no_anchor else anchor_rule("kang-ifnb-pbmc")
        model.config["sampling"].pop("anchor", None)         # training's default rule
        if rule:
            model.config["sampling"]["anchor"] = rule
        if args.save_models:
            # named for what it lacks (train_model's default name is "model"), as the app lists it
            model.config["name"] = f"kang-without-{ct.replace('+', 'plus').lower()}-stimulated"
            model.save(args.save_models / ct.replace("+", "plus"), overwrite=True)
        cond = Condition.parse(ct, "stimulated", context="organism=human,tissue=blood")
        if rule:
            assert model.anchor_for(cond) is not None, f"the anchor rule does not apply to {ct}"
        if model.members > 1:
            # the held-out stimulated cells in two random halves: one chooses the top-100 DEGs,
            # the other is scored (choosing genes on the scored cells' own noise would make
            # the noisiest genes look missed)
            pred = predict_effects(model, cond, n=2000, seed=0)
            stim = np.flatnonzero((adata.obs["cell_type"].astype(str) == ct).to_numpy()
                                  & (adata.obs["condition"].astype(str) == "stimulated")
                                  .to_numpy())
            half = np.random.default_rng(0).permutation(stim)[: len(stim) // 2]
            keep_a = np.ones(adata.n_obs, bool)
            keep_a[half] = False
            keep_b = np.ones(adata.n_obs, bool)
            keep_b[np.setdiff1d(stim, half)] = False
            chooser = real_effect(model, adata[keep_a], schema, cond, min_cells=3)
            real = real_effect(model, adata[keep_b], schema, cond, min_cells=3)
            rec = coverage_record(pred, real, select=None if chooser is None else
                                  chooser.effect) if real is not None else None
            if rec is not None:
                rec["evidence_kind"] = pred.evidence.kind
                rec["members"] = model.members
                records.append(rec)
                half = np.asarray(rec["half1"])
                print(f"{ct:<12} effect interval (scale 1): median half-width "
                      f"{np.median(half):.3f}, median |real effect| "
                      f"{np.median(rec['abs_real']):.3f}, held-out cells {real.n_cells}, "
                      f"evidence {pred.evidence.kind}", flush=True)
        for mode, g in ((m, g) for m in ("denovo", "perturb") for g in args.guidance):
            gv = None if g == "auto" else g
            r = score(model, adata, schema, cond, mode=mode, seed=0, guidance=gv)
            if args.compare_flow and rule:
                alone = score(model, adata, schema, cond, mode=mode, seed=0, guidance=gv,
                              anchor=False).row("model")
                r.rows.append({**alone, "method": "model_flow_alone"})
            for row in r.rows:
                rows.append({"cell_type": ct, "mode": mode, "guidance": g,
                             "train_s": round(train_s, 1), **row})
            m, b = r.row("model"), r.row("mean_shift")
            print(f"{ct:<12} {mode:<8} g={g!s:<4} train {train_s:5.0f}s  "
                  f"R2top100 model {m['r2_top100']:.3f} vs mean-shift {b['r2_top100']:.3f}  "
                  f"Pearson-delta top100 model {m['pearson_delta_top100']:.3f} vs "
                  f"{b['pearson_delta_top100']:.3f}  energy ratio {m['energy_ratio']:.3f} vs "
                  f"{b['energy_ratio']:.3f}", flush=True)
    print("\nmean over cell types:")
    print(f"{'mode':<8} {'guid.':<6} {'method':<16} {'r2_top100':>10} {'r2_all':>8} "
          f"{'pd_top100':>10} {'pd_all':>8} {'energy':>8}")
    methods = ("model", "model_flow_alone", "mean_shift", "control") if args.compare_flow \
        else ("model", "mean_shift", "control")
    for mode, g, method in ((m, g, k) for m in ("denovo", "perturb") for g in args.guidance
                            for k in methods):
            sel = [r for r in rows if r["mode"] == mode and r["method"] == method
                   and r["guidance"] == g]

            def avg(k, sel=sel):
                v = [r[k] for r in sel if r[k] is not None]
                return float(np.mean(v)) if v else float("nan")
            print(f"{mode:<8} {g!s:<6} {method:<16} {avg('r2_top100'):>10.3f} "
                  f"{avg('r2_all'):>8.3f} "
                  f"{avg('pearson_delta_top100'):>10.3f} {avg('pearson_delta_all'):>8.3f} "
                  f"{avg('energy_ratio'):>8.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if records:
        ensemble_summary(rows, records, args)
    return 0


def primary(args) -> object:
    """The guidance whose rows make the card's evidence row (the first scored)."""
    return args.guidance[0] if args.guidance else "auto"


#: A fold whose leave-one-fold-out noise-aware coverage is below this is named in the verdict.
WEAK_COVERAGE = 0.7


def weakest_fold(records: list[dict], aware: list[dict]) -> str:
    """A sentence for the card's verdict on the fold where the intervals held the real effect
    least often (noise-aware), when that is below :data:`WEAK_COVERAGE`; empty otherwise.
    Says whether that cell type had the largest response (median |real effect|)."""
    if not records:
        return ""
    i = min(range(len(records)), key=lambda k: aware[k]["coverage"])
    if aware[i]["coverage"] >= WEAK_COVERAGE:
        return ""
    ct = str(records[i]["condition"]).split(" | ")[0]
    largest = aware[i]["median_abs_real"] >= max(a["median_abs_real"] for a in aware)
    why = (f"the strongest responder of the {len(records)}: its response was under-stated"
           if largest else "its response was mis-sized")
    return (f" Weakest case: {ct}, where the intervals held the real effect for only "
            f"{aware[i]['coverage']:.0%} of the top-100 genes ({why}); treat the size of a "
            "large predicted response as a lower bound.") if largest else (
            f" Weakest case: {ct}, where the intervals held the real effect for only "
            f"{aware[i]['coverage']:.0%} of the top-100 genes ({why}).")


def ensemble_summary(rows: list[dict], records: list[dict], args) -> None:
    """Leave-one-fold-out coverage of the effect intervals, the factor fitted on all folds,
    and the card's "new cell type" evidence row (de novo, at the first --guidance scored)."""
    import numpy as np

    from build_scripts.train_models import anchor_nested
    from engine.effects import coverage_at, fit_scale

    raw, aware = [], []
    for i, rec in enumerate(records):
        scale = fit_scale(records[:i] + records[i + 1:])
        raw.append(coverage_at([rec], scale, noise_aware=False))
        aware.append(coverage_at([rec], scale, noise_aware=True))
        print(f"{rec['condition']:<28} coverage {raw[-1]['coverage']:.2f} (noise-aware "
              f"{aware[-1]['coverage']:.2f}) with the factor of the other folds {scale:.2f}; "
              f"median width {raw[-1]['median_width']:.3f} vs median |real| "
              f"{raw[-1]['median_abs_real']:.3f}")
    scale = fit_scale(records)
    cov = {"scale": round(scale, 4),
           "coverage": round(float(np.mean([c["coverage"] for c in raw])), 4),
           "coverage_noise_aware": round(float(np.mean([c["coverage"] for c in aware])), 4),
           "median_width": round(float(np.median([c["median_width"] for c in raw])), 4),
           "median_abs_real": round(float(np.median([c["median_abs_real"] for c in raw])), 4),
           "conditions": len(records), "folds": len(records),
           "method": "leave-one-fold-out: each cell type scored with the factor fitted on the "
                     "other cell types"}
    print(f"\nleave-one-fold-out coverage {cov['coverage']:.3f} (noise-aware "
          f"{cov['coverage_noise_aware']:.3f}); factor on all folds {scale:.3f}")

    def mean_of(method):
        sel = [r for r in rows if r["mode"] == "denovo" and r["guidance"] == primary(args)
               and r["method"] == method]
        out = {}
        for k in ("r2_top100", "pearson_delta_top100", "energy_ratio"):
            v = [r[k] for r in sel if r.get(k) is not None]
            if v:
                out[k] = round(float(np.mean(v)), 3)
        return out | {"n": len({r["cell_type"] for r in sel})}

    def r2(ct, method):
        return next(r["r2_top100"] for r in rows if r["cell_type"] == ct and r["method"] ==
                    method and r["mode"] == "denovo" and r["guidance"] == primary(args))

    cts = list(dict.fromkeys(r["cell_type"] for r in rows))
    below = [ct for ct in cts if r2(ct, "model") < r2(ct, "mean_shift")]
    model, base = mean_of("model"), mean_of("mean_shift")
    verdict = (f"New cell type for this perturbation: in leave-one-cell-type-out tests "
               f"({len(cts)} cell types) the model reached R2 {model['r2_top100']:.2f} on "
               f"average on the top-100 changed genes, the mean-shift baseline "
               f"{base['r2_top100']:.2f}")
    if below:
        verdict += (f"; but the baseline did better for {len(below)} of the {len(cts)} cell "
                    f"types ({', '.join(below)}): compare the two before acting on a gene")
    if cov["median_width"] >= cov["median_abs_real"]:
        verdict += (f". The 90% intervals are wide here (median width "
                    f"{cov['median_width']:.1f} against a median real effect of "
                    f"{cov['median_abs_real']:.1f}): for a cell type it never saw with this "
                    "perturbation, the model gets the pattern of changes (Pearson delta "
                    f"{model['pearson_delta_top100']:.2f}) more reliably than their size.")
    else:
        verdict += (f"; Pearson delta {model['pearson_delta_top100']:.2f}. The 90% intervals "
                    f"(median width {cov['median_width']:.2f} against a median real effect of "
                    f"{cov['median_abs_real']:.2f}) held the real effect for "
                    f"{cov['coverage']:.0%} of the top-100 genes in folds scored with a factor "
                    "fitted on the other folds.")
    nested = None if args.no_anchor else anchor_nested("kang-ifnb-pbmc")
    if nested and primary(args) == "auto":
        model["r2_top100_nested"] = nested["denovo"]["r2_top100"]
        verdict += (f" The rule that starts these cells was chosen on the same "
                    f"{nested['folds']} folds; chosen on the others and scored on each fold in "
                    f"turn (one network each), it reached R2 {nested['denovo']['r2_top100']:.2f}"
                    ", the fairer expectation.")
    verdict += weakest_fold(records, aware)
    g = primary(args)
    how = ("the model's choice (guidance per evidence class"
           + ("" if args.no_anchor else ", latent baseline of docs/results/anchor.json")
           + ")") if g == "auto" else f"guidance {g:g}"
    entry = {"model": model | {"cell_types_below_baseline": below},
             "baseline": {"name": "mean_shift", **base}, "coverage": cov, "verdict": verdict,
             "source": f"Kang leave-one-cell-type-out, {len(records)} cell types "
                       f"(build_scripts/kang_loo.py), de novo, {how}, "
                       f"{records[0].get('members', '?')} members" if records else ""}
    if args.ensemble_json:
        args.ensemble_json.write_text(json.dumps(
            {"evidence": {"new_cell_type": entry}, "calibration": {"new_cell_type": cov["scale"]},
             "records": records}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
