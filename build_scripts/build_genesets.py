"""Build resources/genesets/ from ../shared/genesets/ (python build_scripts/build_genesets.py).

Ships the 50 MSigDB Hallmark sets (v7.5.1, whole) and the Reactome pathways of 15 to 300 genes
whose names speak of immune signalling, cell cycle, apoptosis, stress, metabolism or
differentiation (a readable list for the app's gene-set score menu, not the whole 1,448). Each
file keeps its source's GMT lines unchanged (empty padding fields dropped). Citations and
licences: resources/genesets/README.md.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("PERTURB_STUDIO_GENESETS", ROOT / ".." / "shared" / "genesets"))
OUT = ROOT / "resources" / "genesets"
REACTOME_WORDS = re.compile(
    r"interferon|interleukin|TNF|toll|NF-kB|antigen|MHC|T cell receptor|B cell receptor|"
    r"cytokine|chemokine|complement|cell cycle checkpoints|mitotic|DNA replication|apoptosis|"
    r"p53|unfolded protein|heat shock|hypoxia|oxidative|glycolysis|TCA cycle|cholesterol|"
    r"fatty acid|translation|ribosom|erythro|hemostasis|platelet|WNT|Notch|Hedgehog|TGF|MAPK|"
    r"PI3K|mTOR|JAK|STAT|NOTCH|senescence|autophagy|DNA repair", re.I)


def read_gmt(path: Path):
    for line in path.read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 3:
            yield f[0], f[1], [g for g in f[2:] if g]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    hall = list(read_gmt(SRC / "h.all.v7.5.1.symbols.gmt"))
    with open(OUT / "hallmark_v7.5.1.gmt", "w") as f:
        for name, desc, genes in hall:
            f.write("\t".join([name, desc, *genes]) + "\n")
    keep = [(n, d, g) for n, d, g in read_gmt(SRC / "ReactomePathways.gmt")
            if 15 <= len(g) <= 300 and REACTOME_WORDS.search(n)]
    with open(OUT / "reactome_selected.gmt", "w") as f:
        for name, desc, genes in keep:
            f.write("\t".join([name, desc, *genes]) + "\n")
    print(f"{len(hall)} Hallmark sets, {len(keep)} Reactome pathways -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
