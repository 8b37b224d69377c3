"""Print the README's table of shipped models from their cards (card.json, written by
build_scripts/train_models.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def coverage(card: dict) -> str:
    """The interval coverage on the card split (engine.effects, cross-fitted)."""
    entry = (card.get("evidence") or {}).get("measured") or {}
    c = entry.get("coverage") or {}
    if c.get("coverage") is None:
        return f"n/a ({card.get('members', 1)})"
    return (f"{c['coverage_noise_aware']:.2f} / {c['coverage']:.2f} "
            f"({card.get('members', 1)}; width {c['median_width']:.2f} vs real "
            f"{c['median_abs_real']:.2f})")


def main() -> int:
    from engine import shipped_models_dir

    print("| model | conditions on | genes | held-out group | model R2 top100 | "
          "model Pearson delta top100 | model energy ratio | best baseline (R2 / Pearson "
          "delta / energy) | real training cells, a yardstick for held-out noise "
          "(R2 / Pearson delta / energy) | 90% interval coverage, noise-aware / raw "
          "(members) | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for folder in sorted(p for p in shipped_models_dir().iterdir() if p.is_dir()):
        card = json.loads((folder / "card.json").read_text())
        sp = card["conditions"]
        what = [f"{len(sp['cell_types'])} cell types"] if sp["cell_types"] else []
        if sp["targets"]:
            types = sorted({t for v in sp["target_types"].values() for t in v})
            what.append(f"{len(sp['targets'])} targets" + (f" ({'/'.join(types)})"
                                                           if types else "")
                        + (f", up to {sp['max_perturbations']} at once"
                           if sp["max_perturbations"] > 1 else ""))
        if sp["context_levels"]:
            what.append("context " + " > ".join(sp["context_levels"]))
        for group in dict.fromkeys(r["group"] for r in card["metrics"]):
            rows = {r["method"]: r for r in card["metrics"] if r["group"] == group}
            m = rows["model"]
            bases = [r for k, r in rows.items()
                     if k not in ("model", "control", "real_train")] or [rows["control"]]
            ref = rows.get("real_train")

            def f(v):
                return "n/a" if v is None else f"{v:.3f}"
            best = "; ".join(
                f"{b['method']} (n={b['n']}): {f(b.get('r2_top100'))} / "
                f"{f(b.get('pearson_delta_top100'))} / {f(b.get('energy_ratio'))}"
                + ("" if b["n"] == m["n"] else
                   f" [model on the same: {f(b['paired_model'].get('r2_top100'))} / "
                   f"{f(b['paired_model'].get('pearson_delta_top100'))} / "
                   f"{f(b['paired_model'].get('energy_ratio'))}]")
                for b in bases)
            print(f"| {card['name']} | {', '.join(what)} | {len(card['genes'])} | {group} "
                  f"(n={m['n']}) | {f(m.get('r2_top100'))} | "
                  f"{f(m.get('pearson_delta_top100'))} | {f(m.get('energy_ratio'))} | {best} | "
                  + ("n/a" if ref is None else
                     f"{f(ref.get('r2_top100'))} / {f(ref.get('pearson_delta_top100'))} / "
                     f"{f(ref.get('energy_ratio'))}")
                  + f" | {coverage(card) if group == 'all conditions' else ''} | "
                  f"{card.get('build_seconds', card['training']['seconds']):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
