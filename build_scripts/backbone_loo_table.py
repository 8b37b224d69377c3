"""Side-by-side Kang leave-one-out scores of several backbones, from the per-fold lines that
build_scripts/kang_loo.py prints (its .txt outputs in docs/results/), on the cell types they all
have. No training.

    python build_scripts/backbone_loo_table.py mlp=docs/results/kang_loo.txt \\
        transformer=docs/results/kang_loo_transformer.txt ssm=docs/results/kang_loo_ssm.txt \\
        [--mode denovo] [--guidance 1.0 2.0]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LINE = re.compile(r"^(?P<ct>\S+)\s+(?P<mode>denovo|perturb)\s+g=(?P<g>[\d.]+)\s+train\s+(?P<s>\d+)s"
                  r"\s+R2top100 model (?P<r2>[-\d.]+) vs mean-shift (?P<r2b>[-\d.]+)"
                  r"\s+Pearson-delta top100 model (?P<pd>[-\d.]+) vs (?P<pdb>[-\d.]+)"
                  r"\s+energy ratio (?P<e>[-\d.]+) vs (?P<eb>[-\d.]+)")


def read_folds(path: Path) -> dict:
    """(cell type, mode, guidance) -> the fold's numbers."""
    out = {}
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            d = m.groupdict()
            out[(d["ct"], d["mode"], float(d["g"]))] = {
                k: float(d[k]) for k in ("s", "r2", "r2b", "pd", "pdb", "e", "eb")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="NAME=FILE")
    p.add_argument("--mode", default="denovo")
    p.add_argument("--guidance", type=float, nargs="*", default=[1.0, 2.0])
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, _, file = item.partition("=")
        runs[name] = read_folds(Path(file))
    cts = sorted(set.intersection(*({k[0] for k in r} for r in runs.values())))
    if not cts:
        p.error("the runs have no cell type in common")
    print(f"# {args.mode}; cell types in all runs: {', '.join(cts)}; per cell type "
          "R2 top-100 / Pearson delta top-100 / energy ratio (lower is better)")
    for g in args.guidance:
        print(f"\n## guidance {g:g}\n")
        print("| backbone | " + " | ".join(cts) + " | mean | train s (per fold) |")
        print("|---" * (len(cts) + 3) + "|")
        base = None
        for name, r in runs.items():
            rows = [r[(ct, args.mode, g)] for ct in cts]
            cells = [f"{x['r2']:.3f} / {x['pd']:.3f} / {x['e']:.3f}" for x in rows]
            mean = [sum(x[k] for x in rows) / len(rows) for k in ("r2", "pd", "e")]
            secs = ", ".join(f"{x['s']:.0f}" for x in rows)
            print(f"| {name} | " + " | ".join(cells)
                  + f" | {mean[0]:.3f} / {mean[1]:.3f} / {mean[2]:.3f} | {secs} |")
            base = base or rows
        mb = [sum(x[k] for x in base) / len(base) for k in ("r2b", "pdb", "eb")]
        print("| mean shift | " + " | ".join(f"{x['r2b']:.3f} / {x['pdb']:.3f} / {x['eb']:.3f}"
                                            for x in base)
              + f" | {mb[0]:.3f} / {mb[1]:.3f} / {mb[2]:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
