"""Compare two builds of the shipped models: are the weights identical, how far apart are the
held-out metrics in their cards?

    python build_scripts/train_models.py --out /tmp/build_b
    python build_scripts/compare_builds.py resources/models /tmp/build_b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

METRICS = ("r2_top100", "pearson_delta_top100", "energy_ratio")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    names = sorted(d.name for d in args.a.iterdir() if (d / "card.json").exists())
    print(f"{'model':<28}{'weights':<12}{'max |metric diff|':>20}  train s (a / b)")
    for name in names:
        ca = json.loads((args.a / name / "card.json").read_text())
        cb = json.loads((args.b / name / "card.json").read_text())
        same = _sha(args.a / name / "model.safetensors") == _sha(args.b / name /
                                                               "model.safetensors")
        rows_b = {(r["group"], r["method"]): r for r in cb["metrics"]}
        diffs = [abs(r[m] - rows_b[(r["group"], r["method"])][m]) for r in ca["metrics"]
                 if (r["group"], r["method"]) in rows_b for m in METRICS
                 if r.get(m) is not None and rows_b[(r["group"], r["method"])].get(m) is not None]
        print(f"{name:<28}{'identical' if same else 'differ':<12}{max(diffs, default=0):>20.3f}  "
              f"{ca['training']['seconds']} / {cb['training']['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
