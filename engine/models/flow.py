"""The latent generative network: condition encoder + time embedding + backbone."""

from __future__ import annotations

import torch
from torch import nn

from ..conditions.embedders import ConditionEncoder
from ..nn.blocks import TimestepEmbedder
from ..nn.specs import BACKBONE_SPECS


class LatentFlowNet(nn.Module):
    """Predicts the velocity (rectified flow) or noise (DDPM) of a latent cell state, given time
    and condition. ``state`` is the VAE latent plus the standardised log library size, so the
    library size is generated jointly with expression and can respond to the condition."""

    def __init__(self, state_dim: int, level_sizes: list[int], n_targets: int, n_types: int, *,
                 backbone: str = "mlp", cond_dim: int = 128, prior_dim: int = 0,
                 **backbone_kw) -> None:
        super().__init__()
        self.cond = ConditionEncoder(level_sizes, n_targets, n_types, cond_dim, prior_dim)
        self.time = TimestepEmbedder(cond_dim)
        self.backbone = BACKBONE_SPECS[backbone].load()(state_dim, cond_dim, **backbone_kw)

    def embed(self, levels, targets, types, doses, null) -> torch.Tensor:
        return self.cond(levels, targets, types, doses, null)      # (B, C)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cond = torch.nn.functional.silu(self.time(t) + c)          # (B, C)
        return self.backbone(x, cond)                              # (B, D)
