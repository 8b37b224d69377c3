"""Which pathway tokens move most for a condition (models with the pathway-transformer backbone,
engine.nn.pathways).

For each ensemble member, ``n`` latent states are generated de novo for the condition and for
its control from the *same* starting noise (paired, so the difference is not drowned in sampling
noise), and every pathway token's score (the fixed map of engine.nn.pathways: the predicted mean
log1p normalised expression of the set's genes) is averaged over them. The change is perturbed
minus control, per member; the result is their mean, with the member spread.

Public API: :func:`pathway_token_changes`, :class:`PathwayChanges`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .conditions.spec import Condition
from .errors import ConditionError

#: the backbone whose tokens are pathways
PATHWAY_BACKBONE = "pathway-transformer"


@dataclass
class PathwayChanges:
    available: bool
    reason: str = ""                     # why not available
    condition: str = ""
    names: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    fit_r2: list[float] = field(default_factory=list)   # how linear each set's score is
    per_member: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))   # (M, K)
    control: np.ndarray = field(default_factory=lambda: np.zeros(0))          # (K,) score
    n: int = 0

    @property
    def change(self) -> np.ndarray:
        """Mean change over members (K,), in mean log1p expression of the set's genes."""
        return self.per_member.mean(0)

    @property
    def spread(self) -> np.ndarray:
        """Standard deviation of the change across members (zeros for one member)."""
        m = self.per_member
        return m.std(0, ddof=1) if m.shape[0] > 1 else np.zeros(m.shape[1])

    def ranked(self) -> list[tuple[str, float, float]]:
        """(set name, change, member sd), largest absolute change first."""
        order = np.argsort(-np.abs(self.change), kind="stable")
        return [(self.names[i], float(self.change[i]), float(self.spread[i])) for i in order]


def pathway_token_changes(model, condition: Condition, *, n: int = 500, seed: int = 0,
                          steps: int | None = None, guidance: float | None = None
                          ) -> PathwayChanges:
    """The per-token change of ``condition`` against its control (see the module doc), or a
    :class:`PathwayChanges` with ``available`` False and the reason for a model without
    pathway tokens."""
    import torch

    backbone = model.config["architecture"]["backbone"]
    info = model.config.get("pathway_tokens")
    if backbone != PATHWAY_BACKBONE or not info:
        return PathwayChanges(False, f"this model has the {backbone} backbone: its tokens are "
                              "not gene sets. Pathway token changes need a model trained with "
                              f"--backbone {PATHWAY_BACKBONE} (Train page: Network); the Gene "
                              "sets tab scores generated cells for any model.")
    if not isinstance(condition, Condition):
        raise ConditionError(f"expected a Condition, got {type(condition).__name__}")
    cond = model.check_condition(condition)
    if cond.is_control:
        raise ConditionError(f"{cond.label} is a control: pathway token changes compare a "
                             "perturbation with its control")
    control = cond.control()
    steps, guidance = model._sampling(steps, guidance)
    grid = model.objective.grid(steps)
    gen = torch.Generator().manual_seed(int(seed))
    d = model.latent_dim + 1
    per_member, ctrl = [], []
    for net in model.nets:
        x0 = torch.randn(int(n), d, generator=gen).to(model.device)
        means = []
        for c in (cond, control):
            pair = model._cond_pair(c, net)
            x = model._integrate(x0.clone(), *pair, guidance, grid, net=net)
            with torch.no_grad():
                means.append(net.backbone.scores(x).mean(0).cpu().numpy())
        per_member.append(means[0] - means[1])
        ctrl.append(means[1])
    sets = info["sets"]
    return PathwayChanges(True, "", cond.label, [s["name"] for s in sets],
                          [s["collection"] for s in sets], [float(s["fit_r2"]) for s in sets],
                          np.asarray(per_member, dtype=float),
                          np.mean(ctrl, 0).astype(float), int(n))
