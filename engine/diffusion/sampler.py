"""The sampling loop as a generator (DiT's ``p_sample_loop_progressive``).

:func:`sample_progressive` walks a time grid with an objective's deterministic ``step`` and
yields after every step, so the caller reports progress, keeps intermediate states or stops at
any step; a cancel token is checked before each network evaluation. The grid may run either way
(1 -> 0 generates, 0 -> 1 inverts a cell back to its noise).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..progress import CancelToken, check_cancel


@dataclass
class SamplerStep:
    """State after step ``index`` (1-based) of ``total``: ``x`` at time ``t``."""

    index: int
    total: int
    t: float
    x: torch.Tensor


def guided(net, x, t, c, c_null, guidance: float):
    """The network's prediction with classifier-free guidance (one pass when guidance is 1)."""
    pred = net(x, t, c)
    if guidance != 1.0:
        pred_u = net(x, t, c_null)
        pred = pred_u + guidance * (pred - pred_u)
    return pred


def sample_progressive(net, objective, x, c, c_null, guidance: float, grid: Sequence[float],
                       cancel: CancelToken | None = None) -> Iterator[SamplerStep]:
    """Integrate ``x`` along ``grid`` under condition embedding ``c``, yielding every step."""
    total = len(grid) - 1
    with torch.no_grad():
        for i in range(total):
            check_cancel(cancel)
            t = torch.full((1,), grid[i], device=x.device)
            pred = guided(net, x, t, c, c_null, guidance)
            x = objective.step(x, pred, grid[i], grid[i + 1])
            yield SamplerStep(i + 1, total, float(grid[i + 1]), x)


def sample(net, objective, x, c, c_null, guidance: float, grid: Sequence[float],
           on_step=None, cancel: CancelToken | None = None):
    """Drain :func:`sample_progressive`; ``on_step(index)`` after every step; the final x."""
    for s in sample_progressive(net, objective, x, c, c_null, guidance, grid, cancel):
        x = s.x
        if on_step is not None:
            on_step(s.index)
    return x
