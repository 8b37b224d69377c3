"""Model cards: a JSON record (``card.json``) and a human-readable ``CARD.md`` built from it.

Every number in a card comes from the training run and :func:`engine.evaluate.evaluate`; the
card says plainly where the model does not beat a baseline.
"""

from __future__ import annotations

import numpy as np

from .anchor import anchor_lines
from .evaluate import METRICS

REFERENCE = "real_train"     # real cells of the same condition: a yardstick, not a baseline
HIGHER_IS_BETTER = {"r2_top100": True, "r2_all": True, "pearson_delta_top100": True,
                    "pearson_delta_all": True, "energy_ratio": False}


def summarise(results: list[dict], *, group: str = "all") -> list[dict]:
    """Average each method's metrics over evaluation results (``EvalResult.to_dict()``).

    A baseline that exists only for some conditions (additive: combinations only; mean shift:
    perturbations seen in another cell type) is averaged over those conditions, and its row
    carries the model's average over the same conditions (``paired_model``), so that every
    comparison is like for like."""
    out = []
    methods = list(dict.fromkeys(row["method"] for r in results for row in r["rows"]))
    for method in methods:
        subset = [r for r in results if any(x["method"] == method for x in r["rows"])]
        row = {"group": group, "method": method, "n": len(subset),
               **_means(subset, method)}
        if method not in ("model",):
            row["paired_model"] = _means(subset, "model")
        out.append(row)
    return out


def _means(results: list[dict], method: str) -> dict:
    vals: dict[str, list[float]] = {}
    for r in results:
        for row in r["rows"]:
            if row["method"] == method:
                for m in METRICS:
                    if row.get(m) is not None:
                        vals.setdefault(m, []).append(row[m])
    return {m: round(float(np.mean(v)), 3) for m, v in vals.items()}


def verdicts(summary: list[dict]) -> list[str]:
    """Plain sentences: does the model beat each baseline (on the same conditions)?"""
    lines = []
    for base in summary:
        paired = base.get("paired_model")
        if base["method"] == "model" or not paired:
            continue
        if base["method"] == REFERENCE:
            lines.append(_reference_line(base, paired))
            continue
        for m in ("r2_top100", "pearson_delta_top100", "energy_ratio"):
            a, b = paired.get(m), base.get(m)
            if a is None or b is None:
                continue
            better = a > b if HIGHER_IS_BETTER[m] else a < b
            word = "beats" if better else "does NOT beat"
            lines.append(f"[{base['group']}] model {word} {base['method']} on {m} "
                         f"({a:.3f} vs {b:.3f}, {base['n']} conditions)")
    return lines


def _reference_line(ref: dict, model: dict) -> str:
    parts = [f"{m} {model[m]:.3f} vs {ref[m]:.3f}" for m in
             ("r2_top100", "pearson_delta_top100", "energy_ratio")
             if model.get(m) is not None and ref.get(m) is not None]
    return (f"[{ref['group']}] reference, not a baseline: real training cells of the same "
            f"conditions, scored like a prediction, show what the noise of the small held-out "
            f"groups allows. Model vs real training cells: {', '.join(parts)} "
            f"({ref['n']} conditions)")


def _energy_lines(per_condition: list[dict]) -> list[str]:
    """How many single conditions have an energy ratio above 1, for the model and for the
    real training cells (when real cells of the condition are no closer than the control cells,
    the perturbation is below what this metric can see in the held-out cells)."""
    def above(r, method):
        row = next((x for x in r["rows"] if x["method"] == method), None)
        return row is not None and row.get("energy_ratio") is not None and \
            row["energy_ratio"] > 1
    n = len(per_condition)
    model = [r for r in per_condition if above(r, "model")]
    if not n or not model:
        return []
    ref = [r for r in per_condition if above(r, REFERENCE)]
    both = [r for r in model if above(r, REFERENCE)]
    text = (f"Per condition, the model's energy ratio is above 1 (farther from the held-out "
            f"cells than their control cells are) for {len(model)} of {n} conditions")
    if any(x["method"] == REFERENCE for r in per_condition for x in r["rows"]):
        text += (f"; real training cells of the same condition are above 1 for {len(ref)} "
                 f"({len(both)} of them the same conditions): there the perturbation changes "
                 f"these genes too little for this metric to see in the held-out cells")
    return ["", text + "."]


_KEEP = ("r2_top100", "pearson_delta_top100", "energy_ratio")
_BASELINE_ORDER = ("additive", "mean_shift", "control")


def evidence_entry(summary: list[dict], *, group: str = "all conditions",
                   coverage: dict | None = None, source: str = "",
                   baselines: tuple[str, ...] = _BASELINE_ORDER) -> dict | None:
    """One row of a card's ``evidence`` table (read by :func:`engine.effects.evidence_for`):
    the model's held-out scores for a kind of condition, the best simple baseline on the same
    conditions (additive, else mean shift, else no change), the real training cells as a
    yardstick, and the interval's coverage. ``baselines``: the baselines to consider, the first
    one present is reported."""
    rows = {r["method"]: r for r in summary if r.get("group") == group}
    model = rows.get("model")
    if model is None:
        return None
    entry: dict = {"model": {m: model[m] for m in _KEEP if model.get(m) is not None}
                   | {"n": model["n"]}, "source": source}
    ref = rows.get(REFERENCE)
    if ref is not None and ref.get("r2_top100") is not None:
        entry["model"]["yardstick"] = ref["r2_top100"]
    for name in baselines:
        base = rows.get(name)
        if base is not None and base.get("r2_top100") is not None:
            entry["baseline"] = {"name": name, "n": base["n"],
                                 **{m: base[m] for m in _KEEP if base.get(m) is not None},
                                 "model_on_same": {m: base["paired_model"][m] for m in _KEEP
                                                   if base.get("paired_model", {}).get(m)
                                                   is not None}}
            break
    if coverage:
        entry["coverage"] = coverage
    return entry


def _paired_note(model: dict, base: dict) -> str:
    """" (n=3; model 0.964 on the same)" when the baseline covers fewer conditions than the
    model's row (so the two R2 above are not on the same conditions), else ""."""
    same = (base.get("model_on_same") or {}).get("r2_top100")
    if same is None or base.get("n") is None or base.get("n") == model.get("n"):
        return ""
    return f" (n={base['n']}; model {same:.3f} on the same)"


def _short_source(source) -> str:
    """What a card row was measured on, in a few plain words: its ``source`` less the script
    that made it and the run's details (they stay in the evidence table's "from" column)."""
    import re

    if not isinstance(source, str) or not source.strip():
        return "held-out test"
    text = re.sub(r"^build_scripts/\S+\.py:\s*", "", source.strip())
    cut = min((i for i in (text.find(m) for m in (" (", ";", ", one ")) if i > 0),
              default=len(text))
    return text[:cut].rstrip(" ,") or "held-out test"


def _split_clause(model: dict, base: dict | None) -> str:
    """What the control split (engine.evaluate ``control_split``) said about the direction of
    the changes, when the card's row has it ("" otherwise)."""
    m = model.get("pearson_delta_top100_split")
    b = (base or {}).get("pearson_delta_top100_split")
    if m is None:
        return ""
    text = (f"; with control cells not shared between prediction and truth its predicted "
            f"changes correlate with the real ones at {m:.2f} (Pearson delta)")
    if b is not None:
        text += f", the baseline's at {b:.2f}"
        if m < b:
            text += ": the direction of its changes is not confirmed"
    return text


def plain_sentences(card: dict) -> list[str]:
    """Three to five sentences a biologist can act on, from the card's own evaluations."""
    from .effects import EVIDENCE_LABELS

    ev = card.get("evidence") or {}
    out = []
    m = ev.get("measured") or ev.get("population")
    if m:
        s, y = m["model"], m["model"].get("yardstick")
        text = (f"For conditions seen in training, generated cells match held-out real cells "
                f"with R2 {s['r2_top100']:.2f} on the top-100 changed genes")
        if y is not None:
            text += (f" (a fresh sample of real training cells reaches {y:.2f}, so the model is "
                     + ("about as good as a replicate" if s["r2_top100"] >= y - 0.02 else
                        "below a replicate") + ")")
        out.append(text + ".")
    for kind in ("new_cell_type", "new_combination"):
        e = ev.get(kind)
        if not e:
            continue
        s, b = e["model"], e.get("baseline")
        # a rule chosen on the scored folds: expect its nested estimate, not the in-sample one
        expect = s.get("r2_top100_nested", s["r2_top100"])
        text = (f"For a {EVIDENCE_LABELS[kind].replace('new ', 'new ', 1)}, expect R2 around "
                f"{expect:.2f}"
                + " (" + (f"{s['r2_top100']:.2f} on the folds its rule was chosen on; "
                          if "r2_top100_nested" in s else "")
                + f"{_short_source(e.get('source'))})")
        if b:
            better = s["r2_top100"] >= b["r2_top100"]
            text += (f"; the simple {b['name'].replace('_', ' ')} baseline reaches "
                     f"{b['r2_top100']:.2f}" + ("" if better else
                                                 ", so prefer the baseline there"))
            losses = s.get("cell_types_below_baseline") or []
            if better and losses:
                text += (f", and it did better for {len(losses)} of the {s.get('n', '?')} "
                         f"cell types tested ({', '.join(losses)}): look at both")
        text += _split_clause(s, b)
        out.append(text + ".")
    e = ev.get("new_gene")
    if e:
        s, b = e["model"], e.get("baseline")
        text = (f"For a gene never perturbed in training (predicted from gene-set priors), "
                f"expect R2 around {s['r2_top100']:.2f} (leave-one-gene-out)")
        if b:
            better = s["r2_top100"] >= b["r2_top100"] and not s.get("metrics_below_baseline")
            text += (f"; the {b['name'].replace('_', ' ')} baseline reaches "
                     f"{b['r2_top100']:.2f}" + ("" if better else
                                                 " and does better on "
                                                 + ", ".join(m.replace("_", " ") for m in
                                                             s.get("metrics_below_baseline")
                                                             or ["r2_top100"])
                                                 + ", so prefer the baseline, shown beside it"))
        out.append(text + ".")
    if not any(ev.get(k) for k in ("new_cell_type", "new_combination")) and \
            (card.get("conditions") or {}).get("targets"):
        out.append("Predictions for cell types or combinations not seen in training were not "
                   "tested for this model: treat them as hypotheses and compare with the "
                   "baseline shown beside them.")
    if not (card.get("conditions") or {}).get("targets"):
        n_types = len((card.get("conditions") or {}).get("cell_types") or [])
        out.append(f"It has no perturbations: use it to generate reference populations of its "
                   f"{n_types} cell types, not to predict the effect of a perturbation.")
    cov = (m or {}).get("coverage") if m else None
    if cov and cov.get("coverage_noise_aware") is not None:
        out.append(f"Each predicted effect carries a 90% interval from {card.get('members', 5)} "
                   f"independently trained ensemble members; on held-out cells it held the "
                   f"real effect for {cov['coverage_noise_aware']:.0%} of the top-100 changed "
                   f"genes (allowing for the noise of the held-out cells; "
                   f"{cov['coverage']:.0%} without that allowance).")
    for limit in card.get("limitations") or []:       # the card's own caveats, first first
        if len(out) >= 3:
            break
        if isinstance(limit, str) and limit not in out:
            out.append(limit if limit.endswith(".") else limit + ".")
    return out[:5]


def render_markdown(config: dict, card: dict) -> str:
    sp = config["space"]
    tr = config.get("training", {})
    lines = [f"# {config['name']}", ""]
    if card.get("plain"):
        lines += [" ".join(card["plain"]), ""]
    if card.get("summary"):
        lines += [card["summary"], ""]
    lines += ["## What it conditions on", ""]
    if sp.get("context_levels"):
        lines.append("- Context: " + " > ".join(
            f"{lv} ({', '.join(sp['context_values'][lv])})" for lv in sp["context_levels"]))
    if sp.get("cell_types"):
        lines.append(f"- Cell types ({len(sp['cell_types'])}): {', '.join(sp['cell_types'])}")
    if sp.get("targets"):
        lines.append(f"- Perturbation targets ({len(sp['targets'])}, up to "
                     f"{sp['max_perturbations']} at once, order-free): "
                     + ", ".join(t + (f" ({'/'.join(sp['target_types'][t])})"
                                      if sp["target_types"].get(t) else "")
                                 for t in sp["targets"]))
    else:
        lines.append("- No perturbations: generates unperturbed reference populations.")
    lines.append(f"- Dose: {'yes' if sp.get('has_dose') else 'no (no real drug/dose data was available to us; see below)'}")
    lines.append(f"- Conditions seen in training: {len(sp.get('seen', []))}. Other combinations "
                 "of known values are accepted and are predictions by composition.")
    lines += ["", "## Training data", ""]
    for k in ("data", "citation", "split", "notes"):
        if card.get(k):
            lines.append(f"- {k.capitalize()}: {card[k]}")
    lines.append(f"- Cells used: {tr.get('n_cells')}; genes: {len(config['genes'])} "
                 f"({config['preprocessing']['gene_selection']})")
    rule = config["sampling"].get("anchor")
    anchored = set(rule.get("kinds", ["new_cell_type"])) if isinstance(rule, dict) else set()
    lines += ["", "## Model", "",
              f"- NB-VAE (latent {config['architecture']['latent_dim']}) + "
              f"{config['architecture']['objective']} in latent space, "
              f"{config['architecture']['backbone']} backbone; sampling "
              f"{config['sampling']['steps']} steps, guidance {config['sampling']['guidance']}"
              + "".join(f", {g:g} for {kind.replace('_', ' ')} conditions"
                        + (" drawn by the flow alone" if kind in anchored else "")
                        for kind, g in
                        (config['sampling'].get('guidance_by_evidence') or {}).items()),
              *(f"- {x}" for x in anchor_lines(config)),
              f"- Preprocessing: {config['preprocessing']['encoder_input']}; decoder "
              f"{config['preprocessing']['decoder']}",
              f"- Training: {tr.get('seconds')} s on {tr.get('hardware')} "
              f"({tr.get('threads')} threads, {tr.get('device')}), seed {tr.get('seed')}, "
              f"torch {tr.get('torch')}"]
    pw = config.get("pathway_tokens")
    if isinstance(pw, dict) and pw.get("sets"):
        sets = pw["sets"]
        lines.append(f"- Pathway tokens: {len(sets)} gene sets, each one token (its score: "
                     "mean log normalised expression of the set's genes, read from the latent "
                     "state by a fixed linear map fitted after the autoencoder, R2 "
                     f"{min(x['fit_r2'] for x in sets):.2f}-{max(x['fit_r2'] for x in sets):.2f}"
                     "), + one token for the whole state: "
                     + "; ".join(f"{x['collection']}: {x['name']} ({x['model_genes']} genes)"
                                 for x in sets))
    if card.get("metrics"):
        lines += ["", "## Held-out metrics", "",
                  "Scores in log1p(normalize_total 1e4) space; r2 = squared Pearson of mean "
                  "expression; pearson_delta = correlation of predicted vs real change from "
                  "control; energy_ratio = energy distance to real cells / control's (lower is "
                  "better, control = 1). Baselines: control (no change), mean_shift (average "
                  "effect in other cell types/contexts), additive (sum of singles); their effects "
                  "are measured in the training cells. additive_heldout = the same sum measured "
                  "in the held-out cells (it shares the held-out control cells with the truth). "
                  "Reference: real_train = the real training cells of the same condition scored "
                  "as if they were a prediction: a yardstick for the noise of the small held-out "
                  "groups, not a hard ceiling (the model's mean comes from 2,000 generated cells "
                  "and pools what it learnt across conditions). Energy distances compare equal "
                  "numbers of cells.", "",
                  "| group | method | n | " + " | ".join(METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        for r in card["metrics"]:
            lines.append(f"| {r['group']} | {r['method']} | {r['n']} | " + " | ".join(
                "n/a" if r.get(m) is None else f"{r[m]:.3f}" for m in METRICS) + " |")
        if card.get("skipped"):
            lines += ["", "Not scored (fewer than 5 held-out cells in the group or its control): "
                      + "; ".join(card["skipped"]) + "."]
        lines += _energy_lines(card.get("per_condition", []))
        if card.get("verdicts"):
            lines += ["", "### Against the baselines", ""]
            lines += [f"- {v}" for v in card["verdicts"]]
    if card.get("evidence"):
        lines += ["", "## How far to trust each kind of condition", "",
                  "| kind of condition | model R2 top100 | baseline | baseline R2 top100 | "
                  "90% interval coverage (noise-aware / raw) | from |", "|---|---|---|---|---|---|"]
        from .effects import EVIDENCE_LABELS
        for kind, e in card["evidence"].items():
            b = e.get("baseline") or {}
            c = e.get("coverage") or {}
            cov = (f"{c['coverage_noise_aware']:.2f} / {c['coverage']:.2f}"
                   if c.get("coverage") is not None else "n/a")
            nested = e["model"].get("r2_top100_nested")
            split = e["model"].get("pearson_delta_top100_split")
            lines.append(f"| {EVIDENCE_LABELS.get(kind, kind)} | {e['model']['r2_top100']:.3f} "
                         f"(n={e['model']['n']}"
                         + (f"; {nested:.3f} with the rule chosen on the other folds"
                            if nested is not None else "")
                         + (f"; Pearson delta {split:.2f} with control cells not shared, "
                            f"baseline {b.get('pearson_delta_top100_split', float('nan')):.2f}"
                            if split is not None else "")
                         + f") | {b.get('name', 'n/a')} | "
                         + (f"{b['r2_top100']:.3f}" if b.get("r2_top100") is not None
                            else "n/a") + _paired_note(e["model"], b)
                         + f" | {cov} | {e.get('source', '')} |")
    if card.get("limitations"):
        lines += ["", "## Limitations", ""] + [f"- {x}" for x in card["limitations"]]
    lines += ["", f"Genes: {len(config['genes'])} (full list in card.json).", ""]
    return "\n".join(lines)


