"""Leave-one-gene-out: how well does a model with gene-set target priors predict a gene that was
never perturbed in its training data?

    python build_scripts/unseen_genes.py [--datasets papalexi crispr] [--folds 5]
        [--threads 1] [--ae-steps 2000] [--flow-steps 2000] [--no-ablation]
        [--json docs/results/unseen_genes.json] [--txt docs/results/unseen_genes.txt]
    python build_scripts/unseen_genes.py --summarise     # rewrite the text from the json

The single-gene targets of each file are shuffled (seed 0) and split into ``--folds`` folds
(k-fold over genes; one model per fold, not one per gene, to fit a shared CPU). For each fold,
a model is trained on the card split's training cells (engine.evaluate.split: 80 % of every
condition group, seed 0) *without any cell whose perturbation names a gene of the fold* (singles
and the doubles containing it, in every cell line). Each held-out gene is then predicted de novo
in every cell type where the file has it as a single perturbation (default guidance, 2,000
cells), and scored against all its real cells (engine.evaluate.evaluate: R2 over the top-100
DEGs, Pearson delta, energy ratio) beside two baselines computed from the fold's training cells
(engine.evaluate.group_effects), each added to the real control cells:

- ``average_perturbation``: the mean effect of every single perturbation trained in the same
  cell type (and type: CRISPRa / CRISPRi / knockout);
- ``nearest_prior``: the effect of the trained single target most similar to the held-out gene
  in the gene-set priors (cosine of the 64-d embeddings, engine.priors), same cell type.

``control`` (no change) is scored too. With the ablation (default), the same fold also trains a
model without target priors (``target_prior="none"``, same budget and seed) and both are scored
on the held-out 20 % of the conditions they were trained on: what the priors and the
learned-embedding dropout cost (or gain) on trained targets. A model without priors cannot
predict a never-perturbed gene at all, so it has no row in the new-gene table.

Budget: one ensemble member, ``--ae-steps`` autoencoder steps and ``--flow-steps`` flow steps
(the shipped models use five members, 10,000 and 3,000). Writes a json (rows, summaries, the
card evidence row ``new_gene`` for papalexi-thp1-ko and crispr-k562-glioblastoma, read by
build_scripts/train_models.py) and a text report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = {"papalexi": "papalexi-thp1-ko", "crispr": "crispr-k562-glioblastoma"}
BASELINES = ("average_perturbation", "nearest_prior")
GROUP = "new gene (leave-one-gene-out)"
KEEP = ("r2_top100", "pearson_delta_top100", "pearson_delta_all", "energy_ratio")


def _targets(c) -> list[str]:
    return [p.target for p in c.perturbations]


def _cell_targets(adata, schema) -> list[set[str]]:
    """The targets of every cell (empty for control)."""
    codes, uniq = schema.condition_codes(adata)
    per_cond = [set(_targets(c)) for c in uniq]
    return [per_cond[i] for i in codes]


def _without(adata, schema, genes: set[str]):
    """``adata`` without any cell whose perturbation names one of ``genes``."""
    keep = np.array([not (t & genes) for t in _cell_targets(adata, schema)])
    return adata[keep].copy()


def alias_report(adata, schema) -> dict:
    """How the file's targets map to the priors' symbols: exact, by alias, or not at all."""
    from engine.priors import load_gene_priors

    priors = load_gene_priors()
    _, uniq = schema.condition_codes(adata)
    targets = sorted({t for c in uniq for t in _targets(c)})
    aliased = {t: priors.resolve(t) for t in targets
               if priors.resolve(t) is not None and priors.resolve(t) != t}
    missing = [t for t in targets if priors.resolve(t) is None]
    return {"targets": len(targets), "aliased": aliased, "unmapped": missing}


def baselines_for(model, cond, effects, priors) -> tuple[dict, dict]:
    """The two baseline effects of a held-out single ``cond`` from the fold's training effects
    ``[(condition, effect)]``, and what they were made of."""
    p = cond.perturbations[0]
    here = {c.perturbations[0].target: e for c, e in effects
            if len(c.perturbations) == 1 and c.cell_type == cond.cell_type
            and c.context == cond.context and c.perturbations[0].type == p.type}
    out, info = {}, {"n_training_perturbations": len(here)}
    if not here:
        return out, info
    out["average_perturbation"] = np.mean(list(here.values()), axis=0)
    near = priors.nearest(p.target, 1, among=sorted(here))
    if near:
        sym, cos = near[0]
        name = next(t for t in here if priors.resolve(t) == sym)
        out["nearest_prior"] = here[name]
        info.update(nearest=name, cosine=round(cos, 3))
    return out, info


def run_dataset(key: str, args) -> dict:
    import torch

    from build_scripts import train_models
    from engine import train_model
    from engine.cards import summarise
    from engine.errors import ConditionError
    from engine.evaluate import evaluate, evaluate_many, group_effects, split
    from engine.priors import load_gene_priors

    torch.set_num_threads(args.threads)
    priors = load_gene_priors()
    adata, schema, _ = getattr(train_models, key)()
    data = schema.filter(adata)
    train_all, test_all = split(data, schema)
    _, uniq = schema.condition_codes(data)
    singles = sorted({c.perturbations[0].target for c in uniq if len(c.perturbations) == 1})
    order = np.random.default_rng(0).permutation(len(singles))
    folds = [sorted(singles[i] for i in f) for f in np.array_split(order, args.folds)]
    budget = dict(members=1, ae_max_steps=args.ae_steps, flow_steps=args.flow_steps)
    rows, refused, seen = [], [], {"gene_sets": [], "none": []}
    timing = []
    for k, fold in enumerate(folds):
        held = set(fold)
        train = _without(train_all, schema, held)
        print(f"[{key}] fold {k + 1}/{len(folds)}: holding out {', '.join(fold)} "
              f"({train.n_obs} training cells)", flush=True)
        t0 = time.perf_counter()
        model = train_model(train, schema, None, seed=0, device="cpu", target_prior="gene_sets",
                            **budget)
        t_train = time.perf_counter() - t0
        effects = group_effects(model, train, schema)
        for c in uniq:
            if len(c.perturbations) != 1 or c.perturbations[0].target not in held:
                continue
            mask = np.array([bool(t == {c.perturbations[0].target}) or not t
                             for t in _cell_targets(data, schema)])
            real = data[mask]
            try:
                checked = model.check_condition(c)
            except ConditionError as e:     # not in the priors: refused, as in the app
                refused.append({"condition": c.to_dict(), "fold": k, "reason": str(e)})
                print(f"  {c.label}: refused ({str(e)[:80]}...)", flush=True)
                continue
            extra, info = baselines_for(model, checked, effects, priors)
            r = evaluate(model, real, schema, c, seed=0, baselines=extra,
                         reference=train).to_dict()
            r.update(fold=k, gene=c.perturbations[0].target, **info)
            rows.append(r)
            m = {x["method"]: x for x in r["rows"]}
            print(f"  {c.label}: " + ", ".join(
                f"{name} {m[name]['r2_top100']}" for name in ("model", *BASELINES, "control")
                if name in m and m[name].get("r2_top100") is not None), flush=True)
        t_eval = time.perf_counter() - t0 - t_train
        entry = {"fold": k, "genes": fold, "train_cells": int(train.n_obs),
                 "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1)}
        if not args.no_ablation and (args.ablation_folds is None or k < args.ablation_folds):
            test = _without(test_all, schema, held)
            _, tu = schema.condition_codes(test)
            conds = [c for c in tu if not c.is_control]
            t1 = time.perf_counter()
            plain = train_model(train, schema, None, seed=0, device="cpu", target_prior="none",
                                **budget)
            entry["train_seconds_no_prior"] = round(time.perf_counter() - t1, 1)
            for name, m in (("gene_sets", model), ("none", plain)):
                skipped: list = []
                res = evaluate_many(m, test, schema, conds, seed=0, reference=train,
                                    skipped=skipped)
                seen[name] += [dict(r.to_dict(), fold=k) for r in res]
        timing.append(entry)
    summary = summarise(rows, group=GROUP)
    out = {"model": DATASETS[key], "folds": timing, "rows": rows, "summary": summary,
           "refused": refused,
           "genes": singles, "identifiers": alias_report(data, schema)}
    if not args.no_ablation:
        out["seen_ablation"] = {name: summarise(res, group=f"trained targets, target_prior="
                                                f"{name}") for name, res in seen.items()}
    return out


def clean(result: dict, budget: str) -> dict | None:
    """Keep the model, control and the two baselines (an earlier run also scored evaluate's
    mean_shift, taken from the *held-out* cells of the same gene in the other cell lines: not
    a baseline one could have); recompute the summary; return the card row."""
    from engine.cards import summarise

    keep = {"model", "control", *BASELINES}
    for row in result["rows"]:
        row["rows"] = [x for x in row["rows"] if x["method"] in keep]
    result["summary"] = summarise(result["rows"], group=GROUP)
    return evidence_row(result, budget)


def evidence_row(result: dict, budget: str) -> dict | None:
    """The card's ``new_gene`` evidence row: the model against the better of the two baselines
    (by mean R2 over the top-100 DEGs)."""
    from engine.cards import evidence_entry

    rows = {r["method"]: r for r in result["summary"]}
    ranked = sorted((b for b in BASELINES if rows.get(b, {}).get("r2_top100") is not None),
                    key=lambda b: -rows[b]["r2_top100"])
    entry = evidence_entry(result["summary"], group=GROUP, baselines=tuple(ranked),
                           source=f"leave-one-gene-out, {len(result['folds'])} folds over the "
                                  f"single-gene targets ({budget}): "
                                  "build_scripts/unseen_genes.py")
    base = (entry or {}).get("baseline")
    if not base:
        return entry
    mine = base["model_on_same"]
    worse = [m for m in ("r2_top100", "pearson_delta_top100", "energy_ratio")
             if m in mine and m in base and (mine[m] > base[m] if m == "energy_ratio"
                                             else mine[m] < base[m])]
    entry["model"]["metrics_below_baseline"] = worse
    name = base["name"].replace("_", " ")
    text = (f"Never perturbed in training, predicted from gene-set priors: in leave-one-gene-out "
            f"the model reached R2 {mine['r2_top100']:.2f} on the top-100 DEGs, the {name} "
            f"baseline {base['r2_top100']:.2f}")
    if worse:
        text += ("; the baseline did better on "
                 + ", ".join(m.replace("_", " ") for m in worse)
                 + ": prefer it, and treat the model as a second opinion.")
    else:
        text += ", and the model was at least as good on every metric."
    entry["verdict"] = text
    return entry


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:6.3f}"


def report(res: dict) -> str:
    b = res["budget"]
    lines = ["Genes never perturbed in training: leave-one-gene-out",
             "=" * 53, "",
             f"Budget: {b['text']}. Times were measured on a shared, contended 2-core VM "
             "(CPU, 1 thread).", "",
             "A model with gene-set target priors (architecture.target_prior = gene_sets: the "
             "target's 64-d SVD row of the gene x set membership matrix, engine/priors.py, "
             "projected and added to its learned embedding; learned part dropped with p = 0.25 "
             "in training) is trained without any cell naming the held-out genes, then asked "
             "for each of them de novo. Baselines come from the same training cells:",
             "  average_perturbation = mean effect of all trained single perturbations in the "
             "same cell type, added to the real control cells;",
             "  nearest_prior = effect of the trained single target nearest in the priors "
             "(cosine), same cell type;",
             "  control = no change.",
             "Metrics (engine/evaluate.py): R2 of the mean over the top-100 DEGs, Pearson "
             "correlation of the change (top-100 DEGs and all genes), energy ratio (< 1 is "
             "closer to the real cells than the control cells are).", ""]
    for key, r in res["datasets"].items():
        lines += [f"## {key} ({r['model']}): {len(r['genes'])} single-gene targets, "
                  f"{len(r['folds'])} folds, {len(r['rows'])} held-out gene x cell-type "
                  "conditions", "", f"Command: {r.get('command', res['command'])}", ""]
        lines.append(f"{'method':<22}{'n':>4}" + "".join(f"{m:>22}" for m in KEEP))
        for s in r["summary"]:
            lines.append(f"{s['method']:<22}{s['n']:>4}" + "".join(
                f"{_fmt(s.get(m)):>22}" for m in KEEP))
        lines.append("")
        model = {x["method"]: x for x in r["summary"]}.get("model", {})
        for base in BASELINES + ("control",):
            s = {x["method"]: x for x in r["summary"]}.get(base)
            if not s or not model:
                continue
            for m in ("r2_top100", "pearson_delta_top100", "energy_ratio"):
                a, bb = s.get("paired_model", {}).get(m), s.get(m)
                if a is None or bb is None:
                    continue
                better = a < bb if m == "energy_ratio" else a > bb
                lines.append(f"  model {'beats' if better else 'does NOT beat'} {base} on {m} "
                             f"({a:.3f} vs {bb:.3f}, {s['n']} conditions)")
        wins = {base: 0 for base in BASELINES}
        for row in r["rows"]:
            m = {x["method"]: x for x in row["rows"]}
            for base in BASELINES:
                if base in m and m["model"].get("r2_top100") is not None and \
                        m[base].get("r2_top100") is not None and \
                        m["model"]["r2_top100"] > m[base]["r2_top100"]:
                    wins[base] += 1
        lines.append("  per condition, model R2 top-100 above: " + ", ".join(
            f"{base} in {n} of {len(r['rows'])}" for base, n in wins.items()))
        if r.get("refused"):
            lines.append("  refused (not in the gene-set priors, so the model cannot be asked "
                         "for them): " + ", ".join(sorted({
                             f"{x['condition']['cell_type']} "
                             f"{x['condition']['perturbations'][0]['target']}"
                             for x in r["refused"]})))
        lines += ["", "Per held-out gene (R2 top-100 DEGs; nearest = the nearest trained target "
                      "in the priors, with its cosine):",
                  f"  {'condition':<34}{'model':>7}{'avg':>7}{'near':>7}{'ctrl':>7}  nearest"]
        for row in r["rows"]:
            m = {x["method"]: x.get("r2_top100") for x in row["rows"]}
            c = row["condition"]
            label = f"{c['cell_type']} {row['gene']}"
            lines.append(f"  {label:<34}{_fmt(m.get('model'))} {_fmt(m.get('average_perturbation'))}"
                         f" {_fmt(m.get('nearest_prior'))} {_fmt(m.get('control'))}  "
                         f"{row.get('nearest', '')} {row.get('cosine', '')}")
        if r.get("seen_ablation"):
            n_ab = sum("train_seconds_no_prior" in f for f in r["folds"])
            lines += ["", "Cost on trained targets (held-out 20% of the cells of the conditions "
                          f"each fold trained on, {n_ab} of {len(r['folds'])} folds; model "
                          "rows only, mean over conditions x folds):",
                      f"  {'target_prior':<14}{'n':>5}" + "".join(f"{m:>22}" for m in KEEP)]
            for name, summ in r["seen_ablation"].items():
                s = next((x for x in summ if x["method"] == "model"), None)
                if s:
                    lines.append(f"  {name:<14}{s['n']:>5}" + "".join(
                        f"{_fmt(s.get(m)):>22}" for m in KEEP))
        ids = r["identifiers"]
        lines += ["", f"Identifiers: {ids['targets']} targets; mapped by the priors' alias table "
                      f"(org.Hs.eg.db): "
                  + (", ".join(f"{a} -> {s}" for a, s in ids["aliased"].items()) or "none")
                  + "; unmapped: " + (", ".join(ids["unmapped"]) or "none") + ".",
                  "Fold times (s): " + "; ".join(
                      f"fold {f['fold'] + 1} train {f['train_seconds']}"
                      + (f" (no-prior {f['train_seconds_no_prior']})"
                         if "train_seconds_no_prior" in f else "")
                      + f" eval {f['eval_seconds']}" for f in r["folds"]), ""]
        ev = res["evidence"].get(r["model"], {}).get("new_gene")
        if ev and ev.get("baseline"):
            bb = ev["baseline"]
            lines += [f"Card row (new gene): model R2 top-100 {ev['model']['r2_top100']:.3f} "
                      f"vs the better baseline, {bb['name']}, {bb['r2_top100']:.3f}. "
                      + ev.get("verdict", ""), ""]
    raw = ROOT / "docs" / "results" / "unseen_genes_raw_rows.json"
    if raw.is_file():
        from engine.priors import load_gene_priors

        old = json.loads(raw.read_text())
        pri = load_gene_priors()
        norms = ", ".join(f"{g} {float(np.linalg.norm(pri.embedding(g))):.1f}"
                          for g in ("MAPK1", "STAT3", "JAK2"))
        lines += ["## Before: raw prior rows (an earlier version of the embedder)", "",
                  "The first run fed the projection the raw SVD rows (U S) instead of their "
                  "direction. A row's norm grows with the gene's number of memberships, so "
                  f"well-annotated genes ({norms}; median of all genes "
                  f"{float(np.median(np.linalg.norm(pri.matrix, axis=1))):.2f}) lay beyond the "
                  "trained targets and the projection extrapolated. Same budget, "
                  f"{raw.relative_to(ROOT)} (command: {old.get('command', '')}):"]
        for key, r in old.get("datasets", {}).items():
            rows = {x["method"]: x for x in r["summary"]}
            lines.append(f"  {key}: R2 top-100 model {rows['model']['r2_top100']:.3f}, "
                         + ", ".join(f"{b} {rows[b]['r2_top100']:.3f}" for b in BASELINES
                                     if b in rows)
                         + f"; Pearson delta top-100 model "
                         f"{rows['model']['pearson_delta_top100']:.3f}, "
                         + ", ".join(f"{b} {rows[b]['pearson_delta_top100']:.3f}"
                                     for b in BASELINES if b in rows)
                         + f" ({rows['model']['n']} conditions)")
        lines += ["  crispr (stopped after fold 1, log in docs/results/"
                  "unseen_genes_raw_rows_crispr_fold1.log): MAPK1 was predicted far worse "
                  "than either baseline in all four cell lines.", ""]
    return "\n".join(lines) + "\n"


def markdown(res: dict) -> str:
    """The README's table: per dataset, the model against each baseline (means over the
    held-out gene x cell-type conditions)."""
    out = ["| data (model) | held-out conditions | method | R2 top-100 | Pearson delta top-100 | "
           "Pearson delta all | energy ratio |", "|---|---|---|---|---|---|---|"]
    for key, r in res["datasets"].items():
        for s in r["summary"]:
            out.append(f"| {key} ({r['model']}) | {s['n']} | {s['method']} | "
                       + " | ".join(_fmt(s.get(m)).strip() for m in KEEP) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="*", choices=sorted(DATASETS),
                   default=["papalexi", "crispr"])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ae-steps", type=int, default=2000)
    p.add_argument("--flow-steps", type=int, default=2000)
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--ablation-folds", type=int, default=None,
                   help="train the no-prior model only in the first N folds (default: all)")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "unseen_genes.json")
    p.add_argument("--txt", type=Path, default=ROOT / "docs" / "results" / "unseen_genes.txt")
    p.add_argument("--summarise", action="store_true",
                   help="no training: rewrite --txt from --json")
    p.add_argument("--markdown", action="store_true",
                   help="no training: print the README's table from --json")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.json.read_text())))
        return 0
    if args.summarise:
        res = json.loads(args.json.read_text())
        for r in res["datasets"].values():
            row = clean(r, r.get("budget", res["budget"]["text"]))
            if row:
                res["evidence"][r["model"]] = {"new_gene": row}
        _write(args.json, json.dumps(res, indent=1))
    else:
        budget = (f"1 ensemble member, {args.ae_steps} autoencoder steps, {args.flow_steps} "
                  f"flow steps, seed 0, {args.threads} thread(s)")
        cmd = ("python build_scripts/unseen_genes.py --datasets " + " ".join(args.datasets)
               + f" --folds {args.folds} --threads {args.threads} --ae-steps {args.ae_steps} "
               f"--flow-steps {args.flow_steps}" + (" --no-ablation" if args.no_ablation
                                                    else "")
               + (f" --ablation-folds {args.ablation_folds}"
                  if args.ablation_folds is not None else ""))
        res = {"command": cmd, "budget": {"text": budget, "members": 1,
                                          "ae_steps": args.ae_steps,
                                          "flow_steps": args.flow_steps, "folds": args.folds},
               "datasets": {}, "evidence": {}}
        if args.json.is_file():          # keep the other datasets of an earlier run
            old = json.loads(args.json.read_text())
            res["datasets"] = {k: {"command": old.get("command", ""), **v}
                               for k, v in old.get("datasets", {}).items()
                               if k not in args.datasets}
            res["evidence"] = {k: v for k, v in old.get("evidence", {}).items()
                               if k not in {DATASETS[d] for d in args.datasets}}
        for key in args.datasets:
            r = run_dataset(key, args)
            r["command"] = cmd.replace(" ".join(args.datasets), key)
            r["budget"] = budget
            clean(r, budget)
            res["datasets"][key] = r
            row = evidence_row(r, budget)
            if row:
                res["evidence"][r["model"]] = {"new_gene": row}
            _write(args.json, json.dumps(res, indent=1))
    _write(args.txt, report(res))
    print(report(res))
    return 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
