"""NB sampling: the engine's sampler vs gamma-Poisson on every entry, on the NB means the
shipped Kang model decodes for 2,048 generated cells (ratio measured in one run)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    from engine import Condition, PerturbModel
    from engine.models.autoencoder import sample_nb

    torch.set_num_threads(2)
    m = PerturbModel.load("kang-ifnb-pbmc", device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, m.latent_dim + 1, generator=g)
    c, c0 = m._cond_pair(m.check_condition(Condition.parse("CD4T", "stimulated")))
    x = m._integrate(x, c, c0, 1.0, m.objective.grid(10))
    s = x * m._std + m._mean
    with torch.no_grad():
        log_mu = m.autoencoder.log_mean(s[:, :m.latent_dim], s[:, m.latent_dim:])
    theta = m.autoencoder.log_theta.detach().exp().expand_as(log_mu).contiguous()
    best = {"engine sampler": 1e9, "gamma-Poisson everywhere": 1e9}
    for _ in range(3):
        t = time.perf_counter()
        sample_nb(log_mu, m.autoencoder.log_theta.detach(), g)
        best["engine sampler"] = min(best["engine sampler"], time.perf_counter() - t)
        t = time.perf_counter()
        lam = torch._standard_gamma(theta, generator=g) * (log_mu.exp() / theta)
        torch.poisson(lam, generator=g)
        best["gamma-Poisson everywhere"] = min(best["gamma-Poisson everywhere"],
                                               time.perf_counter() - t)
    for k, v in best.items():
        print(f"{k:>26}: {v * 1000:7.1f} ms for 2048 x {log_mu.shape[1]} entries")
    print(f"{'speed-up':>26}: {best['gamma-Poisson everywhere'] / best['engine sampler']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
