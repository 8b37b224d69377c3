"""Generative objectives in latent space, behind one interface.

Convention for both: t = 0 is data, t = 1 is noise. Each objective gives
- ``corrupt(x0, noise, t) -> (x_t, target)`` for training the network's prediction,
- ``step(x, pred, t, t_next) -> x_next``, a deterministic update that works in both directions
  (t_next < t generates, t_next > t inverts a cell back to its noise: "perturb my cells"),
- ``grid(steps)`` the time points the sampler visits, from 1 to 0.

Sampling loops live in the caller (``engine.model``), so a job can be cancelled between steps.
"""

from __future__ import annotations

import math

import torch


class RectifiedFlow:
    """x_t = (1 - t) x0 + t eps; the network predicts the velocity v = eps - x0 (Liu et al. 2022).
    Euler steps along the (nearly straight) path."""

    name = "rectified_flow"
    t_max = 1.0

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        # logit-normal time sampling (Esser et al. 2024) spends effort mid-path
        return torch.sigmoid(torch.randn(n, generator=generator))

    def corrupt(self, x0, noise, t):
        tt = t[:, None]
        return (1 - tt) * x0 + tt * noise, noise - x0

    def step(self, x, pred, t: float, t_next: float):
        return x + (t_next - t) * pred

    def grid(self, steps: int) -> list[float]:
        return [1.0 - i / steps for i in range(steps + 1)]


class DDPM:
    """Variance-preserving diffusion with the cosine schedule (Nichol & Dhariwal 2021), epsilon
    prediction, and deterministic DDIM steps (Song et al. 2021) for sampling and inversion."""

    name = "ddpm"
    t_max = 0.995
    s = 0.008

    def alpha_bar(self, t):
        if isinstance(t, torch.Tensor):
            return torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2
        return math.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, generator=generator) * self.t_max

    def corrupt(self, x0, noise, t):
        ab = self.alpha_bar(t)[:, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, noise

    def step(self, x, pred, t: float, t_next: float):
        ab, ab_next = self.alpha_bar(t), self.alpha_bar(t_next)
        x0 = (x - math.sqrt(1 - ab) * pred) / math.sqrt(ab)
        return math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * pred

    def grid(self, steps: int) -> list[float]:
        return [self.t_max * (1.0 - i / steps) for i in range(steps + 1)]


OBJECTIVES = {"rectified_flow": RectifiedFlow, "ddpm": DDPM}
