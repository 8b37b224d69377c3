"""Score the expression-matched additive start (engine.anchor.match_expression) on the CRISPR
leave-one-double-out fold models, over its optimiser settings (issue 14).

    python build_scripts/crispr_lodo.py --threads 2 --save-models FOLDS --anchor-refine 0
    python build_scripts/match_expression_grid.py FOLDS

Each line: the means over the three held-out doubles of crispr_lodo.py's "anchored s=0
expression" rows (refine 0, guidance 1), both modes, for one setting of (Adam steps, learning
rate, pull towards the latent baseline, genes matched: all or the top-k by |baseline effect|).
The first setting is the engine's default. Output kept in docs/results/crispr_lodo_match.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = [(150, 0.05, 0.0, None), (50, 0.05, 0.0, None), (20, 0.05, 0.0, None),
        (150, 0.01, 0.0, None), (150, 0.05, 0.01, None), (150, 0.05, 0.1, None),
        (150, 0.05, 0.0, 200), (150, 0.05, 0.1, 200), (150, 0.05, 0.0, 50)]


def main(argv=None) -> int:
    import build_scripts.crispr_lodo as lodo
    import engine.anchor as anchor

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folds", type=Path)
    args = p.parse_args(argv)
    default = anchor.match_expression
    try:
        for steps, lr, reg, top in GRID:
            anchor.match_expression = functools.partial(default, steps=steps, lr=lr, reg=reg,
                                                        top=top)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                lodo.main(["--threads", "2", "--models", str(args.folds), "--anchor-refine",
                           "0", "--anchor-match", "latent", "expression"])
            print(f"steps {steps} lr {lr} reg {reg} genes {top or 'all'}")
            for line in out.getvalue().splitlines():
                if line.startswith(("denovo", "perturb")) and "anchored" in line:
                    print("  " + line)
    finally:
        anchor.match_expression = default
    return 0


if __name__ == "__main__":
    sys.exit(main())
