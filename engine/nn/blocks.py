"""Building blocks for the latent velocity / noise models.

Everything is conditioned through one vector ``cond`` (time embedding + condition embedding) that
modulates normalised activations: FiLM in the MLP backbone, AdaLN-Zero in the transformer
(Peebles & Xie, DiT) and in the state-space backbone (engine.nn.ssm). The backbones are listed,
with their options and parameter counts, in the registry engine.nn.specs; ``BACKBONES`` (name ->
class) is read from it. Modulation and output layers start at zero, so an untrained network is the
identity on its residual stream and predicts zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimestepEmbedder(nn.Module):
    """Scalar t in [0, 1] -> sinusoidal features -> MLP."""

    def __init__(self, dim: int, freq_dim: int = 128, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period)
                          * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]           # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(emb)                                        # (B, dim)


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FiLMBlock(nn.Module):
    """Residual MLP block: h + gate * MLP(LN(h) * (1 + scale) + shift), modulation from cond."""

    def __init__(self, width: int, cond_dim: int, expand: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, expand * width), nn.SiLU(),
                                 nn.Dropout(dropout), nn.Linear(expand * width, width))
        self.mod = _zero(nn.Linear(cond_dim, 3 * width))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(cond).chunk(3, dim=-1)       # 3 x (B, W)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, width: int, cond_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = _zero(nn.Linear(cond_dim, 2 * width))
        self.out = _zero(nn.Linear(width, out_dim))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mod(cond).chunk(2, dim=-1)
        if h.dim() == 3:                                           # tokens: (B, K, W)
            shift, scale = shift[:, None], scale[:, None]
        return self.out(self.norm(h) * (1 + scale) + shift)


class MLPBackbone(nn.Module):
    """State vector in, same-size vector out; FiLM-conditioned residual MLP (fast on CPU)."""

    def __init__(self, state_dim: int, cond_dim: int, width: int = 128, depth: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Linear(state_dim, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, cond_dim, dropout=dropout)
                                    for _ in range(depth))
        self.final = FinalLayer(width, cond_dim, state_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)                                            # (B, W)
        for block in self.blocks:
            h = block(h, cond)                                     # (B, W)
        return self.final(h, cond)                                 # (B, D)


class DiTBlock(nn.Module):
    """Transformer block over latent tokens with AdaLN-Zero modulation."""

    def __init__(self, width: int, cond_dim: int, heads: int = 4, expand: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, expand * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(expand * width, width))
        self.mod = _zero(nn.Linear(cond_dim, 6 * width))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s1, c1, g1, s2, c2, g2 = (m[:, None] for m in self.mod(cond).chunk(6, dim=-1))
        a = self.norm1(h) * (1 + c1) + s1                          # (B, K, W)
        h = h + g1 * self.attn(a, a, a, need_weights=False)[0]     # (B, K, W)
        return h + g2 * self.mlp(self.norm2(h) * (1 + c2) + s2)    # (B, K, W)


class LatentTokenBackbone(nn.Module):
    """The latent state projected to K tokens (no gene ordering is imposed: tokens are learned
    mixtures of latent dimensions), processed by ``depth`` blocks ``make_block(i)`` modulated by
    the condition, and projected back. The transformer and the ssm backbones are this with
    their own blocks."""

    def __init__(self, state_dim: int, cond_dim: int, width: int, depth: int, tokens: int,
                 make_block) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.make_tokenizer(state_dim)
        self.blocks = nn.ModuleList(make_block(i) for i in range(depth))
        self.final = FinalLayer(width, cond_dim, width)
        self.out = nn.Linear(tokens * width, state_dim)

    def make_tokenizer(self, state_dim: int) -> None:
        """The modules that turn a state into tokens: learned mixtures of latent dimensions
        plus a learned position (engine.nn.pathways overrides this with gene-set tokens)."""
        self.inp = nn.Linear(state_dim, self.tokens * self.width)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, self.width) * 0.02)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, K, W)."""
        return self.inp(x).view(-1, self.tokens, self.width) + self.pos

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.tokenize(x)                                          # (B, K, W)
        for block in self.blocks:
            h = block(h, cond)                                        # (B, K, W)
        h = self.final(h, cond)                                       # (B, K, W)
        return self.out(h.flatten(1))                                 # (B, D)


class TransformerBackbone(LatentTokenBackbone):
    """Latent tokens processed by DiT blocks (attention + MLP, AdaLN-Zero)."""

    def __init__(self, state_dim: int, cond_dim: int, width: int = 64, depth: int = 3,
                 tokens: int = 8, heads: int = 4) -> None:
        super().__init__(state_dim, cond_dim, width, depth, tokens,
                         lambda _: DiTBlock(width, cond_dim, heads))


def __getattr__(name: str):
    """``BACKBONES``: name -> module class, read from the registry (engine.nn.specs) on first
    use, so that backbones in other modules (engine.nn.ssm) can build on the blocks above."""
    if name == "BACKBONES":
        from .specs import backbone_classes

        value = backbone_classes()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
