"""Gene-set priors: a fixed embedding and the set memberships of each human gene symbol.

The resource ``resources/priors/gene_priors.safetensors`` (+ ``gene_priors.json``) is built by
``build_scripts/build_gene_priors.py`` from MSigDB Hallmark, Reactome, GO (BP / MF / CC,
propagated) and WikiPathways (CC BY 4.0 / CC0; citations in ``resources/priors/README.md``): a
gene's embedding is its row of U S in a truncated SVD of the weighted gene x set membership
matrix, so genes in the same pathways and GO terms lie close together. It is what a model can
know about a gene it never saw perturbed. ``gene_aliases.json.gz`` (org.Hs.eg.db) lets older
symbols and Ensembl gene ids find their gene (MARCH8 -> MARCHF8, ENSG00000115415 -> STAT1).

Headless and light: numpy and safetensors only (no torch, no scanpy).

Public API: :func:`load_gene_priors`, :class:`GenePriors`, :class:`SetRef`,
:func:`priors_dir`, :func:`target_prior_rows`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .resources import resource_dir

FORMAT = "perturb-studio-gene-priors"
FORMAT_VERSION = 1
FILE = "gene_priors.safetensors"
META = "gene_priors.json"
ALIASES = "gene_aliases.json.gz"          # optional: aliases and Ensembl ids -> symbols


@dataclass(frozen=True)
class SetRef:
    """One gene set of the priors: ``source`` (hallmark, reactome, go_bp, go_mf, go_cc,
    wikipathways), its ``id`` (GO:..., R-HSA-..., the MSigDB name) and ``name``."""

    source: str
    id: str
    name: str
    size: int


def priors_dir() -> Path:
    """``$PERTURB_STUDIO_PRIORS_DIR``, else ``resources/priors`` (inside a frozen build too)."""
    return resource_dir("priors", "PERTURB_STUDIO_PRIORS_DIR")


class GenePriors:
    """The embedding (genes x dims, float32) and memberships of every gene in the priors.

    Names are matched as symbols exactly, then ignoring case (human symbols are upper case),
    then as aliases or Ensembl gene ids (:meth:`resolve` says which gene a name found)."""

    def __init__(self, genes: list[str], embedding: np.ndarray, indptr: np.ndarray,
                 indices: np.ndarray, sets: list[SetRef], meta: dict,
                 aliases: dict | None = None) -> None:
        if embedding.shape[0] != len(genes) or len(indptr) != len(genes) + 1:
            raise DataError("gene priors: the gene list and the arrays do not match")
        self.genes: tuple[str, ...] = tuple(genes)
        self.matrix = np.ascontiguousarray(embedding, dtype=np.float32)   # (genes, dims)
        self._indptr, self._indices = indptr, indices
        self.sets: tuple[SetRef, ...] = tuple(sets)
        self.meta = {k: v for k, v in meta.items() if k not in ("genes", "sets")}
        self._index = {g: i for i, g in enumerate(self.genes)}
        self._upper: dict[str, int] = {}
        for i, g in enumerate(self.genes):
            self._upper.setdefault(g.upper(), i)
        # other names -> row: aliases (MARCH8 -> MARCHF8) and Ensembl gene ids, from
        # gene_aliases.json.gz when it is there
        self.aliases_source: str | None = None
        self._alias: dict[str, int] = {}
        if aliases:
            self.aliases_source = aliases.get("source")
            for key in ("aliases", "ensembl"):
                for name, sym in (aliases.get(key) or {}).items():
                    i = self._index.get(sym)
                    if i is not None:
                        self._alias.setdefault(name.upper(), i)
        norm = np.linalg.norm(self.matrix, axis=1, keepdims=True)
        self._unit = self.matrix / np.maximum(norm, 1e-12)

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def fingerprint(self) -> str:
        """sha256 of the gene list and the embedding: a model with target priors records it,
        so prior rows of another build are never mixed with the ones it was trained on."""
        fp = getattr(self, "_fingerprint", None)
        if fp is None:
            import hashlib

            h = hashlib.sha256("\n".join(self.genes).encode())
            h.update(np.ascontiguousarray(self.matrix, dtype="<f4").tobytes())
            fp = self._fingerprint = h.hexdigest()
        return fp

    @property
    def sources(self) -> dict:
        """Source key -> record (file, version, licence, citation, sets, sha256)."""
        return dict(self.meta.get("sources", {}))

    def index(self, symbol: str) -> int | None:
        """Row of ``symbol`` in :attr:`matrix`, or None if the priors do not know it: the
        symbol itself, ignoring case, else an alias or an Ensembl gene id (version dropped)."""
        if not isinstance(symbol, str):
            return None
        i = self._index.get(symbol)
        if i is not None:
            return i
        name = symbol.strip().upper()
        i = self._upper.get(name)
        if i is None and self._alias:
            i = self._alias.get(name)
            if i is None and name.startswith("ENSG") and "." in name:
                i = self._alias.get(name.split(".", 1)[0])
        return i

    def resolve(self, name: str) -> str | None:
        """The priors' symbol for a symbol, alias or Ensembl id (None if unknown)."""
        i = self.index(name)
        return None if i is None else self.genes[i]

    def __contains__(self, symbol: object) -> bool:
        return isinstance(symbol, str) and self.index(symbol) is not None

    def __len__(self) -> int:
        return len(self.genes)

    def embedding(self, symbol: str) -> np.ndarray | None:
        """The gene's embedding (float32, a copy), or None for a symbol not in the priors."""
        i = self.index(symbol)
        return None if i is None else self.matrix[i].copy()

    def sets_of(self, symbol: str) -> list[SetRef] | None:
        """The gene sets the gene belongs to, or None for a symbol not in the priors."""
        i = self.index(symbol)
        if i is None:
            return None
        return [self.sets[j] for j in self._indices[self._indptr[i]:self._indptr[i + 1]]]

    def similarity(self, a: str, b: str) -> float | None:
        """Cosine similarity of two genes' embeddings (None if either is unknown)."""
        i, j = self.index(a), self.index(b)
        if i is None or j is None:
            return None
        return float(self._unit[i] @ self._unit[j])

    def nearest(self, symbol: str, k: int = 10, *,
                among: list[str] | None = None) -> list[tuple[str, float]] | None:
        """The ``k`` genes most similar to ``symbol`` (cosine of the embeddings), most similar
        first, the gene itself excluded; ``among`` restricts the candidates (e.g. the targets
        a model was trained on; symbols the priors lack are skipped). None for an unknown
        symbol."""
        i = self.index(symbol)
        if i is None:
            return None
        if among is None:
            cand = np.arange(len(self.genes))
        else:
            cand = np.array(sorted({j for g in among if (j := self.index(g)) is not None}),
                            dtype=np.int64)
        cand = cand[cand != i]
        if len(cand) == 0 or k <= 0:
            return []
        sims = self._unit[cand] @ self._unit[i]
        top = np.lexsort((cand, -sims))[:k]               # ties: the earlier gene first
        return [(self.genes[cand[t]], float(sims[t])) for t in top]


def target_prior_rows(priors: GenePriors, names: list[str]) -> tuple[np.ndarray, list]:
    """The prior rows of perturbation targets, as the target embedder reads them: (len(names),
    dims + 1) float32, the direction of the gene's embedding (unit length) and a last column 1
    for a name the priors do not know (zeros before it); and the priors' symbol of each name
    (None where unknown).

    Unit length, because the norm of a row grows with the gene's number of memberships: MAPK1
    (2.8) lies far beyond every target of the CRISPR file (at most 1.0), and with raw rows the
    projection extrapolated there (leave-one-gene-out R2 0.19-0.74 for MAPK1, against 0.87-0.94
    for the baselines; docs/results/unseen_genes_raw_rows.json). The direction is what the
    nearest-neighbour baseline compares too (cosine)."""
    rows = np.zeros((len(names), priors.dims + 1), np.float32)
    symbols: list[str | None] = []
    for k, name in enumerate(names):
        i = priors.index(name)
        if i is None:
            rows[k, -1] = 1.0
            symbols.append(None)
        else:
            rows[k, :-1] = priors._unit[i]
            symbols.append(priors.genes[i])
    return rows, symbols


_CACHE: dict[Path, GenePriors] = {}


def load_gene_priors(folder: str | os.PathLike | None = None) -> GenePriors:
    """The gene priors in ``folder`` (default :func:`priors_dir`), read once and cached.

    Raises
    ------
    DataError
        If the files are missing, damaged or of another format.
    """
    folder = Path(folder) if folder is not None else priors_dir()
    key = folder.resolve()
    if key in _CACHE:
        return _CACHE[key]
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / FILE))
    except (OSError, ValueError, SafetensorError) as e:
        raise DataError(f"{folder}: cannot read the gene priors ({e}); rebuild them with "
                        "python build_scripts/build_gene_priors.py") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{folder / META} is not a Perturb Studio gene-priors file")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{folder / META} is of a newer format ({meta['format_version']}); "
                        "please update the app")
    aliases = None
    if (folder / ALIASES).is_file():
        import gzip

        try:
            aliases = json.loads(gzip.decompress((folder / ALIASES).read_bytes()))
        except (OSError, ValueError) as e:
            raise DataError(f"{folder / ALIASES}: cannot read the gene aliases ({e})") from None
        if not isinstance(aliases, dict):
            raise DataError(f"{folder / ALIASES} is not a gene-alias table")
    try:
        sets = [SetRef(s["source"], s["id"], s["name"], int(s["size"])) for s in meta["sets"]]
        priors = GenePriors(list(meta["genes"]), tensors["embedding"],
                            tensors["member_indptr"].astype(np.int64),
                            tensors["member_indices"].astype(np.int64), sets, meta, aliases)
    except (KeyError, TypeError) as e:
        raise DataError(f"{folder}: the gene priors lack an entry ({e})") from None
    if len(priors._indices) and (priors._indices.min() < 0
                                 or priors._indices.max() >= len(sets)):
        raise DataError(f"{folder}: the gene priors' memberships name unknown sets")
    _CACHE[key] = priors
    return priors
