"""Pathway tokens (seed 002, section 7): a latent-token transformer whose tokens are gene sets.

The flow runs in the autoencoder's latent space (latent + log library size, standardised), so a
token cannot pool the expression of a gene set directly without decoding every cell to all genes
at every step. Instead, once the autoencoder is fitted, :func:`prepare` computes a fixed linear
map from the standardised state to each chosen set's *score*: the mean, over the set's genes
among the model's, of the decoded log-normalised expression ``log1p(softmax(decoder(z)) * 1e4)``.
The map is the least-squares fit (with intercept) of those scores on the states of up to 4,096
training cells (fresh posterior samples, the states the flow learns); its R2 per set is recorded.
It is stored in the network as buffers (so in ``model.safetensors``) and the chosen sets are
recorded in ``config.json`` (``pathway_tokens``).

Token k (one per set) is ``z_k(x) * v_k + e_k``, where ``z_k`` is the set's score standardised
over the training cells, ``v_k`` a learned vector and ``e_k`` a learned identity embedding. The
K scores span at most K directions of the state, so one more token carries the whole state
(a learned linear projection of x, plus its own identity embedding): without it the velocity
could not depend on the rest of the state. The tokens then go through the same DiT blocks
(AdaLN-Zero) as the transformer backbone, and back to the state by a learned projection.

Set selection (:func:`select_sets`, deterministic): among the shipped Hallmark and Reactome sets
(engine.genesets), those with at least ``min_genes`` of the model's genes; greedily, the set that
adds the most model genes not yet covered by the sets already chosen (ties: more model genes,
then collection and name), as long as it adds at least ``min_genes // 2`` new genes, up to
``tokens`` sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import DiTBlock, LatentTokenBackbone

#: training cells the score map is fitted on (at most)
FIT_CELLS = 4096


class PathwayTokenBackbone(LatentTokenBackbone):
    """DiT blocks over ``tokens`` gene-set tokens + one token carrying the whole state.

    ``tokens`` is the number of pathway tokens (the sets chosen by :func:`prepare`; until then
    the score map is zero and every pathway token is its identity embedding). ``min_genes`` only
    steers the set selection; it is kept with the other options so a config says how its sets
    were chosen."""

    def __init__(self, state_dim: int, cond_dim: int, width: int = 64, depth: int = 3,
                 tokens: int = 24, heads: int = 4, min_genes: int = 10) -> None:
        self.n_sets, self.min_genes = int(tokens), int(min_genes)
        super().__init__(state_dim, cond_dim, width, depth, tokens + 1,
                         lambda _: DiTBlock(width, cond_dim, heads))

    def make_tokenizer(self, state_dim: int) -> None:
        k, w = self.n_sets, self.width
        # the fixed score map (filled by prepare): score = x @ map.T + bias, in mean log1p
        # expression of the set's genes; z = (score - center) / scale over the training cells
        self.register_buffer("pathway_map", torch.zeros(k, state_dim))
        self.register_buffer("pathway_bias", torch.zeros(k))
        self.register_buffer("pathway_center", torch.zeros(k))
        self.register_buffer("pathway_scale", torch.ones(k))
        self.score_vec = nn.Parameter(torch.randn(k, w))
        self.inp = nn.Linear(state_dim, w)                         # the whole-state token
        self.pos = nn.Parameter(torch.randn(1, k + 1, w))          # identity embeddings

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Pathway scores of standardised states (B, D) -> (B, K): the predicted mean log1p
        normalised expression of each set's genes."""
        return x @ self.pathway_map.T + self.pathway_bias

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.scores(x) - self.pathway_center) / self.pathway_scale        # (B, K)
        sets = z[:, :, None] * self.score_vec                                  # (B, K, W)
        return torch.cat([sets, self.inp(x)[:, None]], dim=1) + self.pos      # (B, K+1, W)


# -- set selection and the score map ----------------------------------------------------------
@dataclass(frozen=True)
class ChosenSet:
    name: str
    collection: str
    genes: tuple[str, ...]          # the set's genes among the model's, in model order
    size: int                       # genes in the whole set

    @property
    def label(self) -> str:
        return f"{self.collection}: {self.name}"


def select_sets(model_genes: Sequence[str], sets, *, tokens: int, min_genes: int
                ) -> list[ChosenSet]:
    """The greedy-coverage choice of the module doc. ``sets``: engine.genesets.GeneSet-like
    objects (name, collection, genes)."""
    order = {g: i for i, g in enumerate(model_genes)}
    cands = []
    for s in sets:
        found = tuple(sorted({g for g in s.genes if g in order}, key=order.__getitem__))
        if len(found) >= min_genes:
            cands.append(ChosenSet(s.name, s.collection, found, len(s.genes)))
    cands.sort(key=lambda c: (c.collection, c.name))
    chosen, covered = [], set()
    while cands and len(chosen) < tokens:
        best = min(cands, key=lambda c: (-len(set(c.genes) - covered), -len(c.genes),
                                         c.collection, c.name))
        if len(set(best.genes) - covered) < max(1, min_genes // 2):
            break
        chosen.append(best)
        covered |= set(best.genes)
        cands.remove(best)
    return chosen


@dataclass
class Prepared:
    """What :func:`prepare` computed: the buffers every network of the model gets."""

    buffers: dict

    def apply(self, net):
        """Put the score map into ``net`` (a LatentFlowNet with this backbone); returns it."""
        bb = net.backbone
        with torch.no_grad():
            for name, value in self.buffers.items():
                getattr(bb, name).copy_(value.to(getattr(bb, name).device))
        return net


def prepare(ae, states, genes: Sequence[str], config: dict) -> Prepared:
    """After the autoencoder is fitted: choose the sets, fit the score map, record the sets in
    ``config["pathway_tokens"]`` and the number of tokens in its ``architecture`` (fewer than
    asked when fewer sets qualify). Raises DataError when no set qualifies."""
    from ..errors import DataError
    from ..genesets import COLLECTIONS, collections

    kw = config["architecture"]["backbone_kw"]
    want, min_genes = int(kw["tokens"]), int(kw["min_genes"])
    pool = [s for sets in collections().values() for s in sets]
    chosen = select_sets(genes, pool, tokens=want, min_genes=min_genes)
    if not chosen:
        raise DataError(f"pathway tokens: no Hallmark or Reactome set has {min_genes} or more "
                        f"of the model's {len(genes)} genes (are they human gene symbols?); "
                        "lower min_genes or use another backbone")
    index = {g: i for i, g in enumerate(genes)}
    n = len(states)
    gen = torch.Generator().manual_seed(12345)
    rows = torch.randperm(n, generator=gen)[:FIT_CELLS].sort().values
    dev = states.mean.device             # (in-memory or disk-backed latent states)
    with torch.no_grad():
        # a posterior sample of each cell, drawn with its own generator (the training
        # stream is left as it is)
        x = dataclasses.replace(states, gen=gen).batch(rows).to(dev)   # (n, D) standardised
        s = x * states.std + states.mean
        z = s[:, : s.shape[1] - 1]
        log_frac = ae.log_mean(z, torch.zeros(len(z), 1, device=dev))  # log softmax
        expr = torch.log1p(torch.exp(log_frac) * 1e4)                   # (n, G)
        y = torch.stack([expr[:, [index[g] for g in c.genes]].mean(1) for c in chosen], 1)
        a = torch.cat([x, torch.ones(len(x), 1, device=dev)], 1).double()
        coef = torch.linalg.lstsq(a, y.double()).solution                 # (D + 1, K)
        fit = (a @ coef).float()
        resid = ((y - fit) ** 2).sum(0)
        r2 = 1 - resid / ((y - y.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    coef = coef.float().cpu()
    buffers = {"pathway_map": coef[:-1].T.contiguous(), "pathway_bias": coef[-1].clone(),
               "pathway_center": fit.mean(0).cpu(),
               "pathway_scale": fit.std(0).clamp_min(1e-4).cpu()}
    kw["tokens"] = len(chosen)
    cites = {name: cite for name, (_file, cite) in COLLECTIONS.items()}
    config["pathway_tokens"] = {
        "sets": [{"name": c.name, "collection": c.collection, "model_genes": len(c.genes),
                  "set_genes": c.size, "fit_r2": round(float(r), 4)}
                 for c, r in zip(chosen, r2.cpu().tolist(), strict=True)],
        "asked": want, "min_genes": min_genes, "fit_cells": len(rows),
        "rule": "Hallmark + Reactome sets with >= min_genes model genes; greedily the set "
                "adding most uncovered model genes (>= min_genes // 2 new), up to 'asked'",
        "score": "mean log1p(softmax(decoder(z)) * 1e4) over the set's model genes, as a "
                 "least-squares linear map of the standardised latent state",
        "sources": sorted({cites.get(c.collection, c.collection) for c in chosen})}
    return Prepared(buffers)
