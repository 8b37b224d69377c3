"""Variational autoencoder with a negative-binomial decoder (scVI-style library handling).

Encoder: log1p(counts / library * 1e4) -> latent Gaussian. Decoder: latent -> gene proportions
(softmax) -> NB mean = proportion * library, with one learned dispersion per gene. The decoder is
not conditioned on anything: every biological difference, perturbations included, has to live in
the latent space where the flow model generates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NBAutoencoder(nn.Module):
    def __init__(self, n_genes: int, latent_dim: int = 32, hidden: int = 128,
                 dropout: float = 0.1, dispersion: str = "gene") -> None:
        super().__init__()
        if dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion must be one of {DISPERSIONS}, got {dispersion!r}")
        self.dispersion = dispersion
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.SiLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LayerNorm(hidden),
                                     nn.SiLU(), nn.Linear(hidden, n_genes))
        self.log_theta = nn.Parameter(torch.full((n_genes,), 1.0))
        if dispersion == "gene-cell":
            # per-cell offset to each gene's dispersion, from the decoder's hidden state: cell
            # types / lines differ in how over-dispersed a gene is (with one dispersion per gene,
            # K562 cells came out with 11 detected genes at the median instead of 15.5)
            self.theta_head = nn.Linear(hidden, n_genes)
            nn.init.zeros_(self.theta_head.weight)
            nn.init.zeros_(self.theta_head.bias)

    @staticmethod
    def normalise(counts: torch.Tensor) -> torch.Tensor:
        lib = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.log1p(counts / lib * 1e4)

    def encode(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self.normalise(counts))                  # (B, H)
        return self.mu(h), self.logvar(h).clamp(-12, 8)           # (B, d) x 2

    def log_mean(self, z: torch.Tensor, log_lib: torch.Tensor) -> torch.Tensor:
        """log NB mean: log_softmax(decoder(z)) + log library. Shapes (B, d), (B, 1) -> (B, G)."""
        return self.nb_params(z, log_lib)[0]

    def nb_params(self, z: torch.Tensor, log_lib: torch.Tensor):
        """(log mean (B, G), log dispersion: (G,) per gene, or (B, G) with "gene-cell")."""
        h = self.decoder[:-1](z)                                   # (B, H)
        log_mu = F.log_softmax(self.decoder[-1](h), dim=-1) + log_lib
        if self.dispersion == "gene":
            return log_mu, self.log_theta
        return log_mu, (self.log_theta + self.theta_head(h)).clamp(-8.0, 12.0)

    def loss(self, counts: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
        mu, logvar = self.encode(counts)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        log_lib = torch.log(counts.sum(dim=1, keepdim=True).clamp_min(1.0))
        log_mu, log_theta = self.nb_params(z, log_lib)
        with torch.autocast(counts.device.type, enabled=False):   # the likelihood in fp32
            nll = -nb_log_prob_sparse(counts.float(), log_mu.float(), log_theta.float())
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        loss = (nll + kl_weight * kl).mean()
        return loss, {"nll": float(nll.detach().mean()), "kl": float(kl.detach().mean())}


DISPERSIONS = ("gene", "gene-cell")


def nb_log_prob(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Negative-binomial log-likelihood, mean/dispersion form, computed in log space."""
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)             # log(theta + mu)
    return (theta * (log_theta - log_theta_mu) + x * (log_mu - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0))


def nb_log_prob_sparse(x: torch.Tensor, log_mu: torch.Tensor,
                       log_theta: torch.Tensor) -> torch.Tensor:
    """Per-cell NB log-likelihood (B,), up to the constant -sum lgamma(x + 1).

    Same value as ``nb_log_prob(...).sum(1) + lgamma(x + 1).sum(1)``, but the lgamma terms, the
    expensive part, are evaluated only where x > 0 (lgamma(0 + theta) - lgamma(theta) = 0), which
    for single-cell counts is a small fraction of entries."""
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)             # (B, G)
    dense = (theta * (log_theta - log_theta_mu) + x * (log_mu - log_theta_mu)).sum(dim=1)
    rows, cols = torch.nonzero(x, as_tuple=True)
    th = theta[rows, cols] if theta.dim() == 2 else theta[cols]
    lg = torch.lgamma(x[rows, cols] + th) - torch.lgamma(th)
    return dense + torch.zeros_like(dense).index_add_(0, rows, lg)


def sample_nb(log_mu: torch.Tensor, log_theta: torch.Tensor, generator: torch.Generator,
              max_iter: int = 24, big_mu: float = 12.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw NB counts; return them sparse as (flat indices, values) in row-major order.

    Inverse-CDF sampling that only ever touches the non-zero draws: one uniform per entry decides
    "zero or not" against P(0) = (theta / (theta + mu))^theta; the survivors walk up the CDF with
    the recurrence p(k+1) = p(k) (k + theta) / (k + 1) * mu / (theta + mu). Entries with a large
    mean (> ``big_mu``, a small minority) are drawn directly from the gamma-Poisson mixture, and
    walks still unresolved after ``max_iter`` steps are completed by rejection (NB draws
    conditioned on exceeding ``max_iter``), so every value is an exact NB draw. Single-cell
    matrices are mostly zeros, so this is several times faster than gamma-Poisson everywhere.
    """
    shape = log_mu.shape
    dev = log_mu.device
    n_genes = shape[-1]
    # a per-gene dispersion stays (G,): broadcasting, never a (B, G) copy of it
    per_gene = log_theta.dim() == 1 or log_theta.shape[0] == 1
    lt_flat = log_theta.reshape(-1) if per_gene else log_theta.expand(shape).reshape(-1)

    def theta_at(idx):                  # log dispersion of flat entries ``idx``
        return lt_flat[idx % n_genes] if per_gene else lt_flat[idx]

    flat_mu = log_mu.reshape(-1)
    big = flat_mu > math.log(big_mu)
    # log P(0) = -theta * log(1 + mu / theta) = -theta * softplus(log mu - log theta)
    p0 = torch.exp(-log_theta.exp() * F.softplus(log_mu - log_theta)).reshape(-1)
    u = torch.rand(shape, generator=generator, device=dev).view(-1)
    walk_idx = torch.nonzero((u > p0) & ~big).squeeze(1)           # small means, k >= 1
    values = torch.zeros(walk_idx.numel(), dtype=torch.int32, device=dev)
    lm, lt = flat_mu[walk_idx], theta_at(walk_idx)
    walk = torch.arange(walk_idx.numel(), device=dev)
    uf, cdf = u[walk_idx], p0[walk_idx]
    pk = cdf.clone()
    th = lt.exp()
    q = torch.sigmoid(lm - lt)                                      # mu / (theta + mu)
    pos = walk
    for k in range(max_iter):
        pk = pk * (k + th) / (k + 1) * q
        cdf = cdf + pk
        done = uf <= cdf
        values[pos[done]] = k + 1
        if k % 3 == 0 or k == max_iter - 1:                         # compact now and then
            keep = ~done & torch.isfinite(uf)
            pos, uf, pk, cdf, th, q, lm, lt = (a[keep] for a in (pos, uf, pk, cdf, th, q, lm, lt))
            if not pos.numel():
                break
        else:
            uf = torch.where(done, torch.inf, uf)                  # finished: never "done" again
    if pos.numel():
        values[pos] = _gamma_poisson_above(lm, lt, max_iter, generator)
    big_idx = torch.nonzero(big).squeeze(1)                         # large means: few entries
    if big_idx.numel():
        th = theta_at(big_idx).exp()
        lam = torch._standard_gamma(th, generator=generator) * (flat_mu[big_idx].exp() / th)
        bv = torch.poisson(lam, generator=generator).to(torch.int32)
        nz = bv > 0
        idx = torch.cat([walk_idx, big_idx[nz]])
        values = torch.cat([values, bv[nz]])
        idx, order = torch.sort(idx)
        return idx, values[order]
    return walk_idx, values


def _gamma_poisson_above(log_mu, log_theta, floor: int, generator, rounds: int = 50):
    """NB draws conditioned on being > ``floor`` (rejection; floor 0 = any positive value)."""
    th = log_theta.exp()
    out = torch.full(log_mu.shape, floor + 1, dtype=torch.int32, device=log_mu.device)
    pending = torch.arange(log_mu.numel(), device=log_mu.device)
    for _ in range(rounds):
        if not pending.numel():
            break
        t = th[pending]
        lam = torch._standard_gamma(t, generator=generator) * (log_mu[pending].exp() / t)
        draw = torch.poisson(lam, generator=generator).to(torch.int32)
        ok = draw > floor
        out[pending[ok]] = draw[ok]
        pending = pending[~ok]
    return out
