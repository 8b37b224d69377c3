"""A selective state-space backbone (Mamba-style, Gu & Dao 2023) in plain PyTorch.

As in the transformer backbone, the latent cell state is projected to K learned tokens (no gene
order is imposed); a stack of :class:`SSMBlock` s then runs a selective scan along the tokens.
Each block is a Mamba mixer: input projection to x and a gate z, a causal depthwise convolution
over the tokens, an input-dependent step size dt and input-dependent B and C (the "selection"),
a diagonal A = -exp(A_log), the recurrence

    s_k = exp(dt_k A) * s_{k-1} + dt_k B_k x_k,        y_k = C_k . s_k + D x_k,

and the output y * silu(z) projected back. Time and condition enter by AdaLN-Zero, as in the
DiT blocks: ``LN(h) * (1 + scale) + shift`` before the mixer and a gate on its output, all from a
zero-initialised linear layer, so a new block is the identity and a new backbone predicts zero.

The tokens have no natural order, so the scan direction alternates between blocks (even blocks
scan 1..K, odd blocks K..1): after two blocks every token has seen every other. The scan is a
loop over the K tokens (8 by default), which is cheap and runs on CPU, CUDA and MPS alike; no
``mamba-ssm`` or custom kernel is needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .blocks import FinalLayer, _zero
from .specs import ssm_dt_rank


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
                   C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The recurrence above, token by token.

    ``x``, ``dt``: (batch, K, E); ``A``: (E, N); ``B``, ``C``: (batch, K, N); ``D``: (E,).
    Returns y: (batch, K, E).
    """
    decay = torch.exp(dt[..., None] * A)                          # (b, K, E, N)
    drive = (dt * x)[..., None] * B[:, :, None, :]                 # (b, K, E, N)
    s = torch.zeros_like(decay[:, 0])                              # (b, E, N)
    ys = []
    for k in range(x.shape[1]):
        s = decay[:, k] * s + drive[:, k]                          # (b, E, N)
        ys.append(torch.einsum("ben,bn->be", s, C[:, k]))          # (b, E)
    return torch.stack(ys, dim=1) + x * D                          # (b, K, E)


class SSMBlock(nn.Module):
    """Mamba mixer over tokens with AdaLN-Zero modulation: h + gate * Mixer(LN(h) * (1 + scale)
    + shift). ``reverse`` scans the tokens from last to first."""

    def __init__(self, width: int, cond_dim: int, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, reverse: bool = False, dt_min: float = 1e-3,
                 dt_max: float = 0.1) -> None:
        super().__init__()
        inner, rank = expand * width, ssm_dt_rank(width)
        self.inner, self.rank, self.d_state, self.reverse = inner, rank, d_state, reverse
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = _zero(nn.Linear(cond_dim, 3 * width))
        self.in_proj = nn.Linear(width, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
                                  .repeat(inner, 1))              # (E, N): A = -1..-N (S4D-real)
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width, bias=False)
        # Mamba's dt initialisation: softplus(bias) log-uniform in [dt_min, dt_max]
        nn.init.uniform_(self.dt_proj.weight, -rank ** -0.5, rank ** -0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus

    def mixer(self, a: torch.Tensor) -> torch.Tensor:
        k = a.shape[1]
        x, z = self.in_proj(a).chunk(2, dim=-1)                      # 2 x (B, K, E)
        x = self.conv(x.transpose(1, 2))[..., :k].transpose(1, 2)    # (B, K, E), causal
        x = F.silu(x)
        dt, B, C = self.x_proj(x).split([self.rank, self.d_state, self.d_state], dim=-1)  # noqa: N806
        dt = F.softplus(self.dt_proj(dt))                            # (B, K, E)
        y = selective_scan(x, dt, -torch.exp(self.A_log), B, C, self.D)   # (B, K, E)
        return self.out_proj(y * F.silu(z))                         # (B, K, W)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = (m[:, None] for m in self.mod(cond).chunk(3, dim=-1))  # (B, 1, W)
        a = self.norm(h) * (1 + scale) + shift                       # (B, K, W)
        if self.reverse:
            return h + gate * self.mixer(a.flip(1)).flip(1)          # (B, K, W)
        return h + gate * self.mixer(a)                              # (B, K, W)


class SSMBackbone(nn.Module):
    """The latent state is projected to K tokens (learned mixtures of latent dimensions, as in
    the transformer backbone), processed by selective state-space blocks that alternate their
    scan direction, and projected back."""

    def __init__(self, state_dim: int, cond_dim: int, width: int = 64, depth: int = 3,
                 tokens: int = 8, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.inp = nn.Linear(state_dim, tokens * width)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.blocks = nn.ModuleList(
            SSMBlock(width, cond_dim, d_state, d_conv, expand, reverse=bool(i % 2))
            for i in range(depth))
        self.final = FinalLayer(width, cond_dim, width)
        self.out = nn.Linear(tokens * width, state_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).view(-1, self.tokens, self.width) + self.pos  # (B, K, W)
        for block in self.blocks:
            h = block(h, cond)                                        # (B, K, W)
        h = self.final(h, cond)                                       # (B, K, W)
        return self.out(h.flatten(1))                                 # (B, D)
