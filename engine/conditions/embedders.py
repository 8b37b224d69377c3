"""Condition embedders: categorical, hierarchical, multi-component perturbation and set.

The condition vector fed to the backbone is ``HierarchicalEmbedder(context..., cell type) +
SetEmbedder(perturbations)``. Each perturbation is a multi-component embedding of (target, type,
dose); the set of perturbations is pooled by a sum (DeepSets), so the result does not depend on the
order the user typed them in, and a double starts out as the sum of its singles.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class CategoricalEmbedder(nn.Module):
    """Index 0 is "absent"; values are 1..n."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(n + 1, dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx)


class HierarchicalEmbedder(nn.Module):
    """Levels coarse -> fine (organism > tissue > cell type > state). Each present level adds a
    residual computed from its parent's embedding and its own value, so a finer level refines the
    coarser ones; an absent level (index 0) leaves the embedding at its parent."""

    def __init__(self, sizes: list[int], dim: int) -> None:
        super().__init__()
        self.root = nn.Parameter(torch.zeros(dim))
        self.levels = nn.ModuleList(CategoricalEmbedder(n, dim) for n in sizes)
        self.mix = nn.ModuleList(_mlp(2 * dim, dim) for _ in sizes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:       # idx: (B, L)
        h = self.root.expand(idx.shape[0], -1)                     # (B, D)
        for j, (emb, mix) in enumerate(zip(self.levels, self.mix, strict=False)):
            e = emb(idx[:, j])                                     # (B, D)
            present = (idx[:, j] > 0).unsqueeze(-1).to(h.dtype)    # (B, 1)
            h = h + present * mix(torch.cat([h, e], dim=-1))       # (B, D)
        return h


class PerturbationEmbedder(nn.Module):
    """Multi-component: (target, perturbation type, dose) -> one vector per perturbation.

    With ``prior_dim`` > 0 (``architecture.target_prior = "gene_sets"``) a target's vector is its
    learned embedding *plus* a projection of its fixed prior row: the gene's gene-set embedding
    (:mod:`engine.priors`) and a last column that is 1 for a target without a prior (zeros
    elsewhere). The prior rows of the trained targets are the buffer ``prior_table`` (saved with
    the weights, so a saved model never needs the resource for them). A target never perturbed
    in training gets an index above ``n_targets``: its prior row comes from
    :meth:`set_new_targets` (not saved) and its learned part is zero, so its vector is the prior
    path alone. During training the learned part of a trained target is dropped with
    probability :attr:`learned_dropout`, so the prior path must carry the signal too."""

    def __init__(self, n_targets: int, n_types: int, dim: int, prior_dim: int = 0) -> None:
        super().__init__()
        self.n_targets, self.prior_dim = int(n_targets), int(prior_dim)
        self.target = CategoricalEmbedder(n_targets, dim)
        self.ptype = CategoricalEmbedder(n_types, dim)
        self.dose = _mlp(1, dim)
        self.combine = _mlp(3 * dim, dim)
        self.learned_dropout = 0.0
        if self.prior_dim > 0:
            self.prior = _mlp(self.prior_dim + 1, dim)
            self.register_buffer("prior_table", torch.zeros(n_targets + 1, self.prior_dim + 1))
            self.register_buffer("new_prior", torch.zeros(0, self.prior_dim + 1),
                                 persistent=False)

    def set_new_targets(self, rows: torch.Tensor) -> None:
        """Prior rows (k, prior_dim + 1) of targets never perturbed in training: they get the
        indices ``n_targets + 1 .. n_targets + k``."""
        if self.prior_dim <= 0:
            raise ValueError("this embedder has no target priors")
        self.new_prior = rows.to(self.prior_table.dtype).to(self.prior_table.device)

    def target_vector(self, targets: torch.Tensor) -> torch.Tensor:      # (B, P) -> (B, P, D)
        if self.prior_dim <= 0:
            return self.target(targets)
        seen = targets <= self.n_targets
        learned = self.target(torch.where(seen, targets, torch.zeros_like(targets)))
        keep = seen
        if self.training and self.learned_dropout > 0:
            keep = keep & (torch.rand(targets.shape, device=targets.device)
                           >= self.learned_dropout)
        table = self.prior_table if not len(self.new_prior) else \
            torch.cat([self.prior_table, self.new_prior])
        return learned * keep.unsqueeze(-1).to(learned.dtype) + self.prior(table[targets])

    def forward(self, targets, types, doses) -> torch.Tensor:     # (B, P) each
        parts = [self.target_vector(targets), self.ptype(types),
                 self.dose(doses.unsqueeze(-1))]
        return self.combine(torch.cat(parts, dim=-1))              # (B, P, D)


class SetEmbedder(nn.Module):
    """Order-invariant pooling of a variable number of perturbations: rho(sum_i phi(e_i)).
    Empty set = the control vector; ``null`` rows (dropped for guidance) get the null vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.phi = _mlp(dim, dim)
        self.rho = _mlp(dim, dim)
        self.control = nn.Parameter(torch.zeros(dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, elems: torch.Tensor, mask: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        pooled = (self.phi(elems) * mask.unsqueeze(-1)).sum(dim=1)  # (B, D)
        out = pooled + self.rho(pooled)                              # (B, D)
        empty = (mask.sum(dim=1) == 0).unsqueeze(-1)
        out = torch.where(empty, self.control.expand_as(out), out)
        return torch.where(null.unsqueeze(-1), self.null.expand_as(out), out)


class ConditionEncoder(nn.Module):
    def __init__(self, level_sizes: list[int], n_targets: int, n_types: int, dim: int,
                 prior_dim: int = 0) -> None:
        super().__init__()
        self.context = HierarchicalEmbedder(level_sizes, dim)
        self.perturbation = PerturbationEmbedder(n_targets, n_types, dim, prior_dim)
        self.set = SetEmbedder(dim)

    def forward(self, levels, targets, types, doses, null) -> torch.Tensor:
        ctx = self.context(levels)                                   # (B, D)
        elems = self.perturbation(targets, types, doses)             # (B, P, D)
        perts = self.set(elems, targets > 0, null)                   # (B, D)
        return ctx + perts
