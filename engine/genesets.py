"""Gene sets (GMT files) and per-cell gene-set scores.

The shipped collections live in ``resources/genesets/`` (MSigDB Hallmark v7.5.1 and a selection
of Reactome pathways, both CC BY 4.0; citations in that folder's README.md). A score is scanpy's
``score_genes`` (Satija et al. 2015, as in Seurat's ``AddModuleScore``): the mean log normalised
expression of the set's genes minus that of randomly drawn control genes of matching expression
(a fixed ``random_state``, so the same cells give the same scores).

Public API: :func:`collections`, :func:`read_gmt`, :class:`GeneSet`, :func:`score_cells`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .resources import resource_dir

#: Shipped collections: display name -> (file, citation).
COLLECTIONS = {
    "Hallmark": ("hallmark_v7.5.1.gmt", "MSigDB Hallmark v7.5.1, Liberzon et al., Cell Syst "
                                        "2015 (CC BY 4.0)"),
    "Reactome": ("reactome_selected.gmt", "Reactome, Milacic et al., NAR 2024 (CC BY 4.0)"),
}


@dataclass(frozen=True)
class GeneSet:
    name: str
    collection: str
    genes: tuple[str, ...]
    description: str = ""

    @property
    def label(self) -> str:
        return f"{self.collection}: {self.name}"


def genesets_dir() -> Path:
    return resource_dir("genesets", "PERTURB_STUDIO_GENESETS_DIR")


def read_gmt(path: str | os.PathLike, collection: str = "") -> list[GeneSet]:
    """The sets of a GMT file (name, description, genes; tab-separated; empty fields ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read the gene sets ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.rstrip("\n").split("\t")
        genes = tuple(g for g in f[2:] if g)
        if len(f) < 3 or not f[0] or not genes:
            if line.strip():
                raise DataError(f"{path}, line {n}: not a GMT line (name, description, genes)")
            continue
        out.append(GeneSet(f[0], collection or path.stem, genes, f[1]))
    return out


def collections() -> dict[str, list[GeneSet]]:
    """The shipped collections, by display name (a missing file gives an empty list)."""
    folder = genesets_dir()
    return {name: (read_gmt(folder / file, name) if (folder / file).exists() else [])
            for name, (file, _cite) in COLLECTIONS.items()}


def score_cells(adata, gene_set: GeneSet, *, min_genes: int = 3,
                random_state: int = 0) -> tuple[np.ndarray, list[str]]:
    """Score every cell of ``adata`` (``X`` = log normalised expression) for ``gene_set``; the
    scores and the set's genes that were found. Raises DataError when fewer than ``min_genes``
    of the set are among the genes."""
    import anndata as ad
    import scanpy as sc

    found = [g for g in gene_set.genes if g in set(map(str, adata.var_names))]
    if len(found) < min_genes:
        raise DataError(f"only {len(found)} of the {len(gene_set.genes)} genes of "
                        f"{gene_set.name} are among these cells' genes; a score needs at least "
                        f"{min_genes}")
    a = ad.AnnData(adata.X, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    a.var_names = adata.var_names.astype(str)
    a.obs_names_make_unique()
    sc.tl.score_genes(a, found, score_name="score", random_state=random_state,
                      ctrl_size=min(50, max(len(found), 10)), use_raw=False)
    return a.obs["score"].to_numpy(dtype=float), found
