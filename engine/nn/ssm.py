"""A selective state-space backbone (Mamba-style; Gu & Dao 2023, Dao & Gu 2024) in plain PyTorch.

As in the transformer backbone, the latent cell state is projected to K learned tokens (no gene
order is imposed); a stack of :class:`SSMBlock` s then runs a selective scan along the tokens.
Each block is a Mamba mixer: an input projection to x and a gate z, a causal depthwise
convolution over the tokens, then the selection: a step size dt, an input matrix B and an
output matrix C computed from each token; a diagonal state matrix A; the recurrence over tokens
k = 1..K, for each of the E inner channels (split into H heads) with an N-dim state s,

    s_k = exp(dt_k a) s_{k-1} + dt_k x_k B_k,        y_k = C_k . s_k + D x_k,

and the gated output y * silu(z) projected back. As in Mamba-2, A is a scalar per head (a = -exp(
A_log), so A = a I is diagonal) and dt is per head: the decay is then a (K x K) matrix per head,
and the whole scan is computed exactly in its dual, matrix form (Mamba-2's SSD with one chunk),

    y = (L o C B^T) (dt x) + D x,    L[k, j] = exp(a (dt_{j+1} + ... + dt_k)) for j <= k, else 0,

two batched matrix products instead of a loop over tokens with an (E x N) state per cell: a
per-channel A (Mamba-1) kept 8x the transformer's sampling time on one CPU thread.
:func:`selective_scan` is the literal recurrence, kept as the reference the tests compare with.

Time and condition enter by AdaLN-Zero, as in the DiT blocks: ``LN(h) * (1 + scale) + shift``
before the mixer and a gate on its output, all from a zero-initialised linear layer, so a new
block is the identity. The tokens have no natural order, so the scan direction alternates between
blocks (even blocks scan 1..K, odd blocks K..1): after two blocks every token has seen every
other. Only operations that CPU, CUDA and MPS all support (linear layers, cumsum, exp, einsum;
tested here on CPU); no ``mamba-ssm`` or custom kernel is needed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .blocks import LatentTokenBackbone, _zero


def selective_scan(x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, B: torch.Tensor,  # noqa: N803
                   C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The recurrence, token by token (the reference for :func:`ssd`).

    ``x``: (batch, K, H, P); ``dt``: (batch, K, H); ``a``, ``D``: (H,); ``B``, ``C``:
    (batch, K, N). Returns y: (batch, K, H, P).
    """
    s = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])       # (b, H, P, N)
    ys = []
    for k in range(x.shape[1]):
        decay = torch.exp(dt[:, k] * a)[..., None, None]                  # (b, H, 1, 1)
        drive = (dt[:, k, :, None] * x[:, k])[..., None] * B[:, k, None, None, :]
        s = decay * s + drive                                             # (b, H, P, N)
        ys.append(torch.einsum("bhpn,bn->bhp", s, C[:, k]))              # (b, H, P)
    return torch.stack(ys, dim=1) + x * D[:, None]                        # (b, K, H, P)


def ssd(x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, B: torch.Tensor,  # noqa: N803
        C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """:func:`selective_scan` in its dual matrix form, exactly (same arguments and result)."""
    k = x.shape[1]
    cum = torch.cumsum(dt * a, dim=1).transpose(1, 2)                     # (b, H, K)
    seg = cum[..., :, None] - cum[..., None, :]                           # (b, H, K, K)
    causal = torch.ones(k, k, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, -math.inf))                # (b, H, K, K)
    scores = torch.einsum("bkn,bjn->bkj", C, B)                           # (b, K, K)
    m = decay * scores[:, None] * dt.transpose(1, 2)[:, :, None, :]      # (b, H, K, K)
    y = torch.einsum("bhkj,bjhp->bkhp", m, x)                             # (b, K, H, P)
    return y + x * D[:, None]                                             # (b, K, H, P)


class SSMBlock(nn.Module):
    """Mamba mixer over tokens with AdaLN-Zero modulation: h + gate * Mixer(LN(h) * (1 + scale)
    + shift). ``reverse`` scans the tokens from last to first."""

    def __init__(self, width: int, cond_dim: int, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, heads: int = 4, reverse: bool = False, dt_min: float = 1e-3,
                 dt_max: float = 0.1) -> None:
        super().__init__()
        inner = expand * width
        self.inner, self.heads, self.d_state, self.reverse = inner, heads, d_state, reverse
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = _zero(nn.Linear(cond_dim, 3 * width))
        self.in_proj = nn.Linear(width, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, heads + 2 * d_state, bias=False)
        # Mamba's initialisation: softplus(dt_bias) log-uniform in [dt_min, dt_max]; decay
        # rates a = -1..-16 spread over the heads
        dt = torch.exp(torch.rand(heads) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, heads)))
        self.D = nn.Parameter(torch.ones(heads))
        self.out_proj = nn.Linear(inner, width, bias=False)

    def causal_conv(self, x: torch.Tensor) -> torch.Tensor:
        """``self.conv`` along the tokens, causal (token k sees tokens k-d+1..k), as d shifted
        multiply-adds: the same result as the grouped Conv1d, several times faster on CPU."""
        k, d = x.shape[1], self.conv.kernel_size[0]
        xp = F.pad(x, (0, 0, d - 1, 0))                              # (B, K + d - 1, E)
        w = self.conv.weight[:, 0]                                   # (E, d)
        out = torch.addcmul(self.conv.bias, xp[:, :k], w[:, 0])      # (B, K, E)
        for i in range(1, d):
            out = torch.addcmul(out, xp[:, i:i + k], w[:, i])        # (B, K, E)
        return out

    def mixer(self, a: torch.Tensor) -> torch.Tensor:
        b, k, _ = a.shape
        x, z = self.in_proj(a).chunk(2, dim=-1)                      # 2 x (B, K, E)
        x = F.silu(self.causal_conv(x))                              # (B, K, E)
        dt, B, C = self.x_proj(x).split([self.heads, self.d_state, self.d_state], dim=-1)  # noqa: N806
        dt = F.softplus(dt + self.dt_bias)                           # (B, K, H)
        y = ssd(x.reshape(b, k, self.heads, -1), dt, -torch.exp(self.A_log), B, C, self.D)
        return self.out_proj(y.reshape(b, k, -1) * F.silu(z))        # (B, K, W)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = (m[:, None] for m in self.mod(cond).chunk(3, dim=-1))  # (B, 1, W)
        a = self.norm(h) * (1 + scale) + shift                       # (B, K, W)
        if self.reverse:
            return h + gate * self.mixer(a.flip(1)).flip(1)          # (B, K, W)
        return h + gate * self.mixer(a)                              # (B, K, W)


class SSMBackbone(LatentTokenBackbone):
    """Latent tokens (as in the transformer backbone) processed by selective state-space blocks
    that alternate their scan direction."""

    def __init__(self, state_dim: int, cond_dim: int, width: int = 64, depth: int = 3,
                 tokens: int = 8, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 heads: int = 4) -> None:
        super().__init__(state_dim, cond_dim, width, depth, tokens,
                         lambda i: SSMBlock(width, cond_dim, d_state, d_conv, expand, heads,
                                            reverse=bool(i % 2)))
