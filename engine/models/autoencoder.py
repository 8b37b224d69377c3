"""Variational autoencoder with a negative-binomial decoder (scVI-style library handling).

Encoder: log1p(counts / library * 1e4) -> latent Gaussian. Decoder: latent -> gene proportions
(softmax) -> NB mean = proportion * library, with one learned dispersion per gene. The decoder is
not conditioned on anything: every biological difference, perturbations included, has to live in
the latent space where the flow model generates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NBAutoencoder(nn.Module):
    def __init__(self, n_genes: int, latent_dim: int = 32, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.SiLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LayerNorm(hidden),
                                     nn.SiLU(), nn.Linear(hidden, n_genes))
        self.log_theta = nn.Parameter(torch.full((n_genes,), 1.0))

    @staticmethod
    def normalise(counts: torch.Tensor) -> torch.Tensor:
        lib = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.log1p(counts / lib * 1e4)

    def encode(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self.normalise(counts))                  # (B, H)
        return self.mu(h), self.logvar(h).clamp(-12, 8)           # (B, d) x 2

    def log_mean(self, z: torch.Tensor, log_lib: torch.Tensor) -> torch.Tensor:
        """log NB mean: log_softmax(decoder(z)) + log library. Shapes (B, d), (B, 1) -> (B, G)."""
        return F.log_softmax(self.decoder(z), dim=-1) + log_lib

    def loss(self, counts: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
        mu, logvar = self.encode(counts)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        log_lib = torch.log(counts.sum(dim=1, keepdim=True).clamp_min(1.0))
        nll = -nb_log_prob_sparse(counts, self.log_mean(z, log_lib), self.log_theta)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)
        loss = (nll + kl_weight * kl).mean()
        return loss, {"nll": float(nll.detach().mean()), "kl": float(kl.detach().mean())}


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
    th = theta[cols]
    lg = torch.lgamma(x[rows, cols] + th) - torch.lgamma(th)
    return dense + torch.zeros_like(dense).index_add_(0, rows, lg)


def sample_nb(log_mu: torch.Tensor, log_theta: torch.Tensor, generator: torch.Generator,
              max_iter: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw NB counts; return them sparse as (flat indices, values) in row-major order.

    Inverse-CDF sampling that only ever touches the non-zero draws: one uniform per entry decides
    "zero or not" against P(0) = (theta / (theta + mu))^theta; the survivors walk up the CDF with
    the recurrence p(k+1) = p(k) (k + theta) / (k + 1) * mu / (theta + mu). Entries still
    unresolved after ``max_iter`` (very large means) fall back to the gamma-Poisson mixture.
    Single-cell matrices are mostly zeros, so this is several times faster than gamma-Poisson on
    every entry, and exact (no truncation).
    """
    shape = log_mu.shape
    log_theta = log_theta.expand(shape)
    # log P(0) = -theta * log(1 + mu / theta) = -theta * softplus(log mu - log theta)
    log_p0 = -log_theta.exp() * F.softplus(log_mu - log_theta)
    u = torch.rand(shape, generator=generator, device=log_mu.device)
    p0 = log_p0.exp()
    idx = torch.nonzero((u > p0).view(-1)).squeeze(1)              # candidates for k >= 1
    uf = u.view(-1)[idx]
    cdf = p0.view(-1)[idx]
    pk = cdf.clone()
    lm, lt = log_mu.reshape(-1)[idx], log_theta.reshape(-1)[idx]
    th = lt.exp()
    q = torch.sigmoid(lm - lt)                                      # mu / (theta + mu)
    values = torch.zeros(idx.numel(), dtype=torch.int32, device=log_mu.device)
    pos = torch.arange(idx.numel(), device=log_mu.device)
    k = 0
    while pos.numel() and k < max_iter:
        pk = pk * (k + th) / (k + 1) * q
        cdf = cdf + pk
        k += 1
        done = uf <= cdf
        values[pos[done]] = k
        keep = ~done
        pos, uf, pk, cdf, th, q, lm = pos[keep], uf[keep], pk[keep], cdf[keep], th[keep], \
            q[keep], lm[keep]
    for _ in range(100):                                           # rare: very large means
        if not pos.numel():
            break
        lam = torch._standard_gamma(th, generator=generator) * (lm.exp() / th)
        draw = torch.poisson(lam, generator=generator).to(torch.int32)
        ok = draw > max_iter
        values[pos[ok]] = draw[ok]
        pos, th, lm = pos[~ok], th[~ok], lm[~ok]
    values[pos] = max_iter + 1
    return idx, values
