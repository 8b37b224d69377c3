"""Norman/McFaline CRISPR out-of-sample checks (one model, several held-out groups).

1. Doubles whose two singles were seen: KLF1+TGFBR2, MAP2K3+MAP2K6, MAP2K3+SLC38A2 (K562,
   CRISPRa) are removed from training and predicted; compared with the additive baseline.
2. A gene held out in one cell line but seen in the others: MAPK1 in A172, TGFBR2 in U87MG,
   MAP3K21 in T98G (CRISPRi) are removed and predicted; compared with mean shift.

    python build_scripts/crispr_heldout.py [--json out.json] [--save-model DIR | --model DIR]

Every task is scored with the flow alone at each ``--guidance`` and with the latent baselines of
engine.anchor (rows "anchored ..."): for the doubles the additive start (the K562 control cells
plus the two singles' effects, matched in the latent space or in expression, refine 0, as the
shipped model's rule), for the transfers the new-cell-type start: the cell line's control cells
plus the gene's latent effect in the other lines, kernel-weighted and refined from flow time 0.2
at guidance 2 (the first Kang rule), uniform and unrefined (the shipped CRISPR rule), and both
with the effect's length kept (``magnitude: mean_norm``; the kernel one is today's Kang rule).
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


#: (tag, task kind it applies to, sampling.anchor) of the anchored variants scored
ANCHORED = [
    ("anchored additive, latent", "double vs additive",
     {"kinds": ["new_combination"], "refine": 0.0, "guidance": 1.0, "match": "latent"}),
    ("anchored additive, expression", "double vs additive",
     {"kinds": ["new_combination"], "refine": 0.0, "guidance": 1.0, "match": "expression"}),
    ("anchored kernel s=0.2 g=2", "gene in new cell line vs mean shift",
     {"kinds": ["new_cell_type"], "refine": 0.2, "guidance": 2.0, "weights": "kernel"}),
    ("anchored uniform s=0", "gene in new cell line vs mean shift",
     {"kinds": ["new_cell_type"], "refine": 0.0, "guidance": 1.0, "weights": "uniform"}),
    # the effect's length kept (engine.anchor.MAGNITUDES): unrefined, and the Kang rule
    ("anchored uniform norm s=0", "gene in new cell line vs mean shift",
     {"kinds": ["new_cell_type"], "refine": 0.0, "guidance": 1.0, "weights": "uniform",
      "magnitude": "mean_norm"}),
    ("anchored kernel .25 norm s=0.2 g=1", "gene in new cell line vs mean shift",
     {"kinds": ["new_cell_type"], "refine": 0.2, "guidance": 1.0, "weights": "kernel",
      "tau": 0.25, "magnitude": "mean_norm"}),
]


def main(argv=None) -> int:
    import numpy as np
    import torch

    from build_scripts.crispr_lodo import scored
    from build_scripts.train_models import crispr
    from engine import Condition, PerturbModel, train_model

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--guidance", type=float, nargs="*", default=[1.0, 2.0])
    p.add_argument("--save-model", type=Path, metavar="DIR", help="keep the trained model")
    p.add_argument("--model", type=Path, metavar="DIR",
                   help="score a model saved by --save-model instead of training one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--control-splits", type=int, default=0, metavar="K",
                   help="mean over K random splits of each task's control cells between the "
                        "methods and the truth (as crispr_lodo.py --control-splits); 0: shared")
    p.add_argument("--evidence-json", type=Path, metavar="PATH",
                   help="also write the card's evidence rows (new combination, new cell type) "
                        "of the shipped anchor rule, de novo (build_scripts/train_models.py "
                        "reads docs/results/crispr_heldout_evidence.json)")
    p.add_argument("--only", nargs="*", metavar="VARIANT",
                   help="score only these variants (their tags, e.g. 'flow alone g=1', "
                        "'anchored uniform s=0')")
    p.add_argument("--rows", type=Path, metavar="ROWS_JSON",
                   help="summarise the rows of an earlier --json instead of scoring")
    p.add_argument("--split-rows", type=Path, metavar="ROWS_JSON",
                   help="with --evidence-json: the rows of a --control-splits run of the same "
                        "model, whose means the card's rows and verdicts report beside the "
                        "shared-control figures")
    args = p.parse_args(argv)
    split_rows = json.loads(args.split_rows.read_text()) if args.split_rows else None
    if args.control_splits and args.evidence_json:
        p.error("the card's rows are the shared-control ones: write --evidence-json from a run "
                "without --control-splits, or with --rows SHARED --split-rows SPLIT")
    if args.rows:
        rows = json.loads(args.rows.read_text())
        if args.evidence_json:
            write_evidence(rows, args.evidence_json, split_rows)
        return 0
    torch.set_num_threads(args.threads)
    adata, schema, _ = crispr()
    exclude = [{"condition": d, "cell_type": "k562"} for d in DOUBLES]
    exclude += [{"condition": g, "cell_type": ct} for g, ct in TRANSFER]
    t0 = time.perf_counter()
    if args.model:
        model = PerturbModel.load(args.model, device="cpu")
    else:
        model = train_model(adata, schema, None, seed=0, device="cpu", exclude=exclude)
        print(f"trained in {time.perf_counter() - t0:.0f} s without {len(exclude)} groups")
        if args.save_model:
            model.save(args.save_model)
    tasks = [("double vs additive", Condition.parse("k562", d, "CRISPRa"), "additive")
             for d in DOUBLES]
    tasks += [("gene in new cell line vs mean shift", Condition.parse(ct, g, "CRISPRi"),
               "mean_shift") for g, ct in TRANSFER]
    variants = [(f"flow alone g={g:g}", g, None) for g in args.guidance]
    variants += [(tag, None, rule) for tag, _, rule in ANCHORED]
    if args.only:
        unknown = set(args.only) - {v[0] for v in variants}
        if unknown:
            p.error(f"unknown variants {sorted(unknown)}; known: {[v[0] for v in variants]}")
        variants = [v for v in variants if v[0] in args.only]
    kind_of = {tag: kind for tag, kind, _ in ANCHORED}

    def applies(tag, rule, kind) -> bool:
        """The flow alone scores every task; an anchored variant only its own kind."""
        return rule is None or kind_of[tag] == kind

    tasks = [t for t in tasks if any(applies(tag, rule, t[0]) for tag, _, rule in variants)]
    rows = []
    for kind, cond, base in tasks:
        for mode in ("denovo", "perturb"):
            for tag, g, rule in variants:
                if not applies(tag, rule, kind):
                    continue
                model.config["sampling"].pop("anchor", None)
                if rule is not None:
                    model.config["sampling"]["anchor"] = rule
                    assert model.anchor_for(cond) is not None, (tag, cond.label)
                m, b = scored(model, adata, schema, cond, mode, g, args.control_splits,
                              baseline=base)
                rows.append({"task": kind, "condition": cond.label, "mode": mode,
                             "variant": tag, "guidance": g, "anchor": rule, "model": m,
                             base: b, "baseline": base})
                print(f"{cond.label:<36} {mode:<8} {tag:<36} "
                      f"R2top100 {m['r2_top100']:.3f} vs {base} {b['r2_top100']:.3f} | "
                      f"Pearson-delta top100 {m['pearson_delta_top100']:.3f} vs "
                      f"{b['pearson_delta_top100']:.3f} | energy {m['energy_ratio']:.3f} vs "
                      f"{b['energy_ratio']:.3f}", flush=True)
    print("\nmeans (wins: conditions where the model >= the baseline on both R2 and PD "
          "top-100):")
    for kind in dict.fromkeys(t[0] for t in tasks):
        for mode in ("denovo", "perturb"):
            for tag in dict.fromkeys(r["variant"] for r in rows if r["task"] == kind):
                sel = [r for r in rows if r["task"] == kind and r["mode"] == mode
                       and r["variant"] == tag]
                base = sel[0]["baseline"]
                f = {k: (np.mean([r["model"][k] for r in sel]),
                         np.mean([r[base][k] for r in sel]))
                     for k in ("r2_top100", "pearson_delta_top100", "energy_ratio")}
                wins = sum(r["model"]["r2_top100"] >= r[base]["r2_top100"] and
                           r["model"]["pearson_delta_top100"] >= r[base]["pearson_delta_top100"]
                           for r in sel)
                print(f"{kind:<36} {mode:<8} {tag:<36} " + "  ".join(
                    f"{k} {a:.3f} vs {b:.3f}" for k, (a, b) in f.items())
                    + f"  wins {wins} of {len(sel)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.evidence_json:
        write_evidence(rows, args.evidence_json, split_rows)
    return 0


#: The rows behind the card's evidence: the variant the shipped model uses for each class
SHIPPED = {"new_combination": ("double vs additive", "anchored additive, latent"),
           "new_cell_type": ("gene in new cell line vs mean shift", "anchored uniform s=0")}
KEYS = ("r2_top100", "pearson_delta_top100", "energy_ratio")


def write_evidence(rows: list[dict], path: Path, split_rows: list[dict] | None = None) -> None:
    """The card's evidence rows (engine.effects): for each class the model has, the shipped
    rule's de novo rows, the baseline on the same conditions, the conditions where the model is
    below the baseline on R2 or Pearson delta top-100.

    ``split_rows`` (a ``--control-splits`` run of the same model): each metric's mean over the
    splits joins the rows as ``<metric>_split``, a Pearson delta below the baseline's there
    counts as a metric below it, and the verdicts say what the split showed (see
    engine.evaluate on shared control cells)."""
    import numpy as np

    def pick(source, task, variant):
        return [r for r in source or [] if r["task"] == task and r["variant"] == variant
                and r["mode"] == "denovo"]

    def mean(sel, who, keys=KEYS):
        return {k: round(float(np.mean([r[who][k] for r in sel])), 3) for k in keys}

    evidence = {}
    for kind, (task, variant) in SHIPPED.items():
        sel = pick(rows, task, variant)
        if not sel:
            continue
        base = sel[0]["baseline"]
        model, baseline = mean(sel, "model"), mean(sel, base)
        below = [r["condition"] for r in sel if any(r["model"][k] < r[base][k]
                                                    for k in KEYS[:2])]
        worse = [k for k in KEYS[:2] if model[k] < baseline[k]]
        split = pick(split_rows, task, variant)
        if split:
            splits = split[0]["model"].get("control_splits")
            model.update({f"{k}_split": v for k, v in mean(split, "model").items()})
            baseline.update({f"{k}_split": v for k, v in mean(split, base).items()})
            if model["pearson_delta_top100_split"] < baseline["pearson_delta_top100_split"]:
                worse.append("pearson_delta_top100_split")
        what = ("held-out K562 CRISPRa doubles whose singles were measured" if
                kind == "new_combination" else
                "genes held out in one glioblastoma line and measured in the others (CRISPRi)")
        entry = {"model": {**model, "n": len(sel), "metrics_below_baseline": worse,
                           "conditions_below_baseline": below},
                 "baseline": {"name": base, **baseline, "n": len(sel)},
                 "source": f"build_scripts/crispr_heldout.py: {len(sel)} {what}, one "
                           "5-member model trained without them, de novo, the shipped anchor "
                           "rule (docs/results/anchor.json)"
                           + (f"; the *_split figures: control cells not shared, means "
                              f"over {splits} random splits of them between prediction and "
                              "truth (--control-splits)" if split else "")}
        entry["verdict"] = _verdict(kind, len(sel), model, baseline, below,
                                    splits if split else None)
        evidence[kind] = entry
    path.write_text(json.dumps({"evidence": evidence}, indent=1) + "\n")
    print(f"wrote {path}")


def _verdict(kind: str, n: int, model: dict, base: dict, below: list[str],
             splits: int | None) -> str:
    """The card's plain sentence for one evidence class (numbers from the rows)."""
    m_r2, m_pd = model["r2_top100"], model["pearson_delta_top100"]
    b_r2, b_pd = base["r2_top100"], base["pearson_delta_top100"]
    split = ""
    if splits:
        split = (f" Much of that agreement in the direction of the changes comes from sharing "
                 f"the real control cells with the truth: with the control cells split between "
                 f"prediction and truth ({splits} random splits), Pearson delta is "
                 f"{model['pearson_delta_top100_split']:.2f} for the model and "
                 f"{base['pearson_delta_top100_split']:.2f} for the baseline. These "
                 f"perturbations change expression little against the noise of the control "
                 f"cells in this data.")
    if kind == "new_combination":
        s = (f"New combination of measured singles: in {n} held-out doubles the model reached "
             f"R2 {m_r2:.2f} on the top-100 changed genes and Pearson delta {m_pd:.2f}, the "
             f"additive baseline (the singles' measured effects summed) {b_r2:.2f} and "
             f"{b_pd:.2f}" + (f"; it is below that baseline on {len(below)} of them"
                              if below else "") + "." + split)
        return s + (" Prefer the sum of the singles' measured effects, and treat the model as "
                    "a second opinion." if below or m_pd < b_pd else "")
    s = (f"Gene measured in other cell lines, new in this one: in {n} held-out tests the model "
         f"reached R2 {m_r2:.2f} on the top-100 changed genes and Pearson delta {m_pd:.2f}, the "
         f"mean-shift baseline {b_r2:.2f} and {b_pd:.2f}." + split)
    if splits and model["pearson_delta_top100_split"] < 0.3:
        s += (" So these tests confirm the cell line's expression level (R2), not the predicted "
              "changes: treat them as unconfirmed.")
    return s + (f" Its cells are further from the real ones in distribution than mean shift's "
                f"(energy ratio {model['energy_ratio']:.2f} vs {base['energy_ratio']:.2f})."
                if model["energy_ratio"] > base["energy_ratio"] else "")


if __name__ == "__main__":
    sys.exit(main())
