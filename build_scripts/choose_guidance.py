"""Choose the guidance scale of each evidence class from held-out folds (issue 14).

Guidance is a property of the evidence class, not one number per model: a condition measured in
training, a cell type never seen with the perturbation and a new combination each get the scale
that scored best on folds that held that kind of condition out. This script reads the rows of
the leave-out benchmarks and writes the choice, per shipped model, to
``docs/results/guidance_by_evidence.json`` (read by ``build_scripts/train_models.py``, which puts
it in the model's ``config.json`` as ``sampling.guidance_by_evidence``) and a table to
``docs/results/guidance_by_evidence.txt``.

    python build_scripts/choose_guidance.py

Sources (rerun them to refresh the rows):
- Kang, new cell type: ``docs/results/kang_loo.txt`` (``python build_scripts/kang_loo.py``: all
  7 cell types held out in turn, de novo and perturb, guidance 1 and 2).
- CRISPR, new cell type (cell-line transfer) and new combination (held-out doubles):
  ``docs/results/crispr_heldout.txt`` (``python build_scripts/crispr_heldout.py``).

Rule: a class moves off the model's default guidance (1.0) only when another scale raises both
the mean R2 and the mean Pearson delta on the top-100 DEGs over every fold and both generation
modes; otherwise it keeps 1.0 (no entry).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"

KANG = re.compile(r"^(?P<fold>\S+)\s+(?P<mode>denovo|perturb)\s+g=(?P<g>[\d.]+)\s+train.*?"
                  r"R2top100 model (?P<r2>[-\d.]+) vs .*?"
                  r"Pearson-delta top100 model (?P<pd>[-\d.]+) vs .*?"
                  r"energy ratio (?P<en>[-\d.]+) vs")
CRISPR = re.compile(r"^(?P<fold>.+?)\s+(?P<mode>denovo|perturb)\s+g=(?P<g>[\d.]+)\s+"
                    r"R2top100 (?P<r2>[-\d.]+) vs (?P<base>\w+) [-\d.]+ \| "
                    r"Pearson-delta top100 (?P<pd>[-\d.]+) vs [-\d.]+ \| "
                    r"energy (?P<en>[-\d.]+) vs")

# (model, evidence class) -> (results file, pattern, which rows belong to the class)
SOURCES = {
    ("kang-ifnb-pbmc", "new_cell_type"): ("kang_loo.txt", KANG, lambda m: True),
    ("crispr-k562-glioblastoma", "new_cell_type"):
        ("crispr_heldout.txt", CRISPR, lambda m: m["base"] == "mean_shift"),
    ("crispr-k562-glioblastoma", "new_combination"):
        ("crispr_heldout.txt", CRISPR, lambda m: m["base"] == "additive"),
}
DEFAULT = 1.0


def rows(path: Path, pattern, keep) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        m = pattern.match(line.strip())
        if m and keep(m):
            out.append({"fold": m["fold"].strip(), "mode": m["mode"], "g": float(m["g"]),
                        "r2": float(m["r2"]), "pd": float(m["pd"]), "energy": float(m["en"])})
    return out


def choose(found: list[dict]) -> tuple[float, dict]:
    """The chosen scale and the mean scores per scale (over folds x modes)."""
    by_g = defaultdict(list)
    for r in found:
        by_g[r["g"]].append(r)
    means = {g: {k: round(sum(r[k] for r in rs) / len(rs), 3) for k in ("r2", "pd", "energy")}
             | {"n": len(rs), "folds": len({r["fold"] for r in rs})}
             for g, rs in sorted(by_g.items())}
    base = means.get(DEFAULT)
    best = DEFAULT
    if base is not None:
        for g, m in means.items():
            if m["r2"] > base["r2"] and m["pd"] > base["pd"] and \
                    (best == DEFAULT or m["r2"] > means[best]["r2"]):
                best = g
    return best, means


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    choice: dict[str, dict[str, float]] = {}
    lines = ["# python build_scripts/choose_guidance.py",
             "# mean over folds x {denovo, perturb} of the top-100-DEG scores; rule: leave 1.0 "
             "only when R2 and Pearson delta both rise"]
    for (model, kind), (fname, pattern, keep) in SOURCES.items():
        path = args.results / fname
        if not path.is_file():
            lines.append(f"{model:26s} {kind:16s} no results ({fname} missing)")
            continue
        best, means = choose(rows(path, pattern, keep))
        for g, m in means.items():
            mark = "  <- chosen" if g == best else ""
            lines.append(f"{model:26s} {kind:16s} g={g:<4g} R2 {m['r2']:.3f}  PD {m['pd']:.3f}"
                         f"  energy {m['energy']:.3f}  ({m['folds']} folds, {m['n']} rows, "
                         f"{fname}){mark}")
        if best != DEFAULT:
            choice.setdefault(model, {})[kind] = best
    text = "\n".join(lines) + "\n"
    (args.results / "guidance_by_evidence.txt").write_text(text)
    (args.results / "guidance_by_evidence.json").write_text(
        json.dumps({"source": "python build_scripts/choose_guidance.py", "default": DEFAULT,
                    "models": choice}, indent=1) + "\n")
    print(text, end="")
    print(json.dumps(choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
