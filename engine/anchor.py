"""Baseline-anchored generation for a cell type never seen with a perturbation.

A flow network asked for a (cell type, perturbation) pair it never saw has to invent the pair
from a sum of embeddings, and on Kang's leave-one-cell-type-out folds it drifted: the CD4T cells
it drew for "stimulated" were further from the real ones than the unstimulated cells were
(energy ratio 0.94). The autoencoder's latent space, on the other hand, transfers the effect
well: the held-out type's control latents plus the perturbation's average latent effect in the
other cell types decode close to the real cells (scGen's latent arithmetic, here in the model's
own VAE space). So for the evidence class ``new_cell_type`` a model can *start from that
baseline* and let the flow add only what it has evidence for:

1. the type's control cells: drawn by the flow (de novo; a measured condition) or the user's
   cells, encoded (perturb mode);
2. plus ``delta``: the mean standardised latent state of each training group that received the
   same perturbation(s) minus that of its own control group, averaged over those groups
   (:func:`latent_group_means` stores every training group's mean with the model), uniformly
   or kernel-weighted, and optionally given the groups' mean effect length
   (:data:`MAGNITUDES`: on Kang the plain average came out 0.59x the length of CD14+Mono's
   real effect, docs/results/latent_arithmetic.txt);
3. optionally refined: noised back to flow time ``refine`` (rectified flow:
   ``x_s = (1 - s) x + s * noise``) and integrated to the data under the condition itself at
   ``guidance`` (SDEdit, Meng et al. 2022): ``refine = 0`` is pure latent arithmetic,
   ``refine = 1`` the flow alone.

A *new combination* (A+B never measured together, but A and B each measured alone in this
cell type) can start the same way from the additive baseline in latent space: the control cells
plus the sum of the singles' latent effects there (:meth:`LatentMeans.additive`).

Whether a model uses it, and with which ``refine`` and ``guidance``, is chosen on leave-out
folds and recorded in ``config.json["sampling"]["anchor"]`` (build_scripts/choose_anchor.py),
like the guidance per evidence class. The latent group means are
``config.json["latent_means"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .conditions.spec import Condition, group_key

__all__ = ["KANG_RULE", "AnchorRule", "LatentMeans", "anchor_lines", "latent_group_means",
           "latent_means_from_cells", "match_expression"]

#: How the other groups' effects are averaged (:meth:`LatentMeans.delta`).
WEIGHTS = ("uniform", "kernel")
#: The evidence classes an anchor can start from: a new cell type (the effect measured in other
#: cell types) and a new combination (the sum of its singles measured in the same cell type).
ANCHOR_KINDS = ("new_cell_type", "new_combination")
#: Where the start is matched to the baseline: in the latent space (the groups' latent effects
#: added) or in expression (a latent shift whose decoded expression moves like the
#: expression-space baseline, :func:`match_expression`).
MATCHES = ("latent", "expression")
#: How long the averaged effect is: the length of the weighted mean vector (``"mean_vector"``,
#: scGen's), or the weighted mean of the groups' own effect lengths (``"mean_norm"``: the
#: direction averaged, the size kept; a mean of vectors that point different ways is shorter
#: than any of them).
MAGNITUDES = ("mean_vector", "mean_norm")
#: Fewest training cells of a group (and of its control) whose mean enters ``delta``.
MIN_GROUP_CELLS = 10


@dataclass(frozen=True)
class AnchorRule:
    """``config.json["sampling"]["anchor"]``: which evidence classes start from the latent
    baseline, how far back the flow refines it (0..1) and at which guidance."""

    kinds: tuple[str, ...] = ("new_cell_type",)
    refine: float = 0.0
    guidance: float = 1.0
    weights: str = "uniform"
    tau: float = 0.5
    match: str = "latent"
    magnitude: str = "mean_vector"
    gain: float = 1.0
    source: str = ""

    @classmethod
    def from_config(cls, d: Mapping | None) -> AnchorRule | None:
        if not d:
            return None
        return cls(tuple(str(k) for k in d.get("kinds", ("new_cell_type",))),
                   float(d.get("refine", 0.0)), float(d.get("guidance", 1.0)),
                   str(d.get("weights", "uniform")), float(d.get("tau", 0.5)),
                   str(d.get("match", "latent")), str(d.get("magnitude", "mean_vector")),
                   float(d.get("gain", 1.0)), str(d.get("source", "")))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["kinds"] = list(self.kinds)
        return out


#: The rule chosen on Kang's seven leave-one-cell-type-out folds (build_scripts/choose_anchor.py,
#: docs/results/anchor.json; a test keeps the two equal): what ``train --anchor`` records.
KANG_RULE = AnchorRule(("new_cell_type",), refine=0.2, guidance=1.0, weights="kernel",
                       tau=0.25, magnitude="mean_norm", gain=1.15,
                       source="chosen on Kang leave-one-cell-type-out folds "
                              "(docs/results/anchor_kang_loo_gain.txt)")


@dataclass(frozen=True)
class LatentMeans:
    """Mean standardised latent state (VAE mean + log library, in the flow's standardisation)
    of every training condition group, with the group's cell count."""

    conditions: tuple[Condition, ...]
    means: np.ndarray          # (G, d + 1)
    n_cells: np.ndarray        # (G,)

    @classmethod
    def from_config(cls, d: Mapping | None) -> LatentMeans | None:
        if not d:
            return None
        conds = tuple(Condition.from_dict(c) for c in d["conditions"])
        return cls(conds, np.asarray(d["mean"], np.float32), np.asarray(d["n_cells"], int))

    def to_dict(self) -> dict:
        return {"conditions": [c.to_dict() for c in self.conditions],
                "mean": np.round(self.means.astype(np.float64), 5).tolist(),
                "n_cells": [int(n) for n in self.n_cells]}

    def delta(self, cond: Condition, *, weights: str = "uniform", tau: float = 0.5,
              magnitude: str = "mean_vector", gain: float = 1.0
              ) -> tuple[np.ndarray, list[Condition], np.ndarray] | None:
        """The latent effect of ``cond``'s perturbations measured in other cell types /
        contexts, from every training group with the same perturbation set (and a control
        group, both with at least :data:`MIN_GROUP_CELLS` cells): its mean minus its control's
        mean. Returns ``(delta, groups, weights)`` or None when there is no such group.

        ``weights="uniform"``: the plain average (scGen's). ``"kernel"``: groups whose control
        cells lie closer to ``cond``'s control cells weigh more, ``w ∝ exp(-d² / (tau *
        median d²))`` with ``d`` the distance between the control means (uniform when
        ``cond``'s control group is not among the training groups).

        ``magnitude="mean_norm"`` rescales the weighted mean to the weighted mean of the
        groups' own effect lengths (see :data:`MAGNITUDES`); ``gain`` multiplies the result."""
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        if magnitude not in MAGNITUDES:
            raise ValueError(f"magnitude must be one of {MAGNITUDES}, got {magnitude!r}")
        index = {group_key(c): i for i, c in enumerate(self.conditions)}
        want = group_key(cond)[1]
        shifts, used, controls = [], [], []
        for i, c in enumerate(self.conditions):
            if c.is_control or group_key(c)[1] != want or group_key(c) == group_key(cond):
                continue
            j = index.get(group_key(c.control()))
            if j is None or min(self.n_cells[i], self.n_cells[j]) < MIN_GROUP_CELLS:
                continue
            shifts.append(self.means[i] - self.means[j])
            used.append(c)
            controls.append(self.means[j])
        if not shifts:
            return None
        w = np.full(len(shifts), 1.0 / len(shifts))
        own = index.get(group_key(cond.control()))
        if weights == "kernel" and own is not None and len(shifts) > 1:
            d2 = ((np.asarray(controls) - self.means[own]) ** 2).sum(axis=1)
            scale = float(np.median(d2)) * float(tau)
            if scale > 0:
                w = np.exp(-(d2 - d2.min()) / scale)
                w /= w.sum()
        shifts = np.asarray(shifts, np.float64)
        out = np.tensordot(w, shifts, 1)
        if magnitude == "mean_norm":
            length = float(np.linalg.norm(out))
            if length > 0:
                out = out * (float(w @ np.linalg.norm(shifts, axis=1)) / length)
        return (out * float(gain)).astype(np.float32), used, w.astype(np.float32)

    def additive(self, cond: Condition) -> tuple[np.ndarray, list[Condition], np.ndarray] | None:
        """A combination never measured together, in a cell type where each of its parts was
        measured alone: the sum of the singles' latent effects there (the additive baseline
        in the model's latent space). Same return as :meth:`delta`; None when a single or
        the control is missing (or has fewer than :data:`MIN_GROUP_CELLS` cells)."""
        if len(cond.perturbations) < 2:
            return None
        index = {group_key(c): i for i, c in enumerate(self.conditions)}
        j = index.get(group_key(cond.control()))
        if j is None or self.n_cells[j] < MIN_GROUP_CELLS:
            return None
        total, used = np.zeros_like(self.means[j]), []
        for p in cond.perturbations:
            single = Condition(cond.cell_type, (p,), cond.context)
            i = index.get(group_key(single))
            if i is None or self.n_cells[i] < MIN_GROUP_CELLS:
                return None
            total = total + self.means[i] - self.means[j]
            used.append(self.conditions[i])
        return total.astype(np.float32), used, np.ones(len(used), np.float32)


def latent_group_means(mus, libs, mean, std, codes: np.ndarray,
                       conditions: Sequence[Condition], *, chunk: int = 65_536) -> LatentMeans:
    """Group means of the standardised states ``(cat(mus, libs) - mean) / std``.

    ``mus`` (n, d) and ``libs`` (n, 1): torch tensors or arrays (memmaps are read in chunks);
    ``codes`` (n,): each cell's index into ``conditions``."""
    mean = np.asarray(_numpy(mean), np.float64)
    std = np.asarray(_numpy(std), np.float64)
    g = len(conditions)
    sums = np.zeros((g, len(mean)), np.float64)
    counts = np.bincount(np.asarray(codes)[: len(mus)], minlength=g)
    for s in range(0, len(mus), chunk):
        block = np.concatenate([_numpy(mus[s:s + chunk]), _numpy(libs[s:s + chunk])], axis=1)
        np.add.at(sums, np.asarray(codes[s:s + chunk]), block.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / np.maximum(counts, 1)[:, None] - mean) / std
    keep = counts > 0
    return LatentMeans(tuple(c for c, k in zip(conditions, keep, strict=True) if k),
                       means[keep].astype(np.float32), counts[keep])


def latent_means_from_cells(model, adata, schema) -> LatentMeans:
    """:func:`latent_group_means` of a saved model's training cells, encoded again (VAE means;
    for models trained before the means were stored with them)."""
    codes, uniq = schema.condition_codes(schema.filter(adata))
    states = model.encode(schema.filter(adata))            # standardised already
    d = states.shape[1]
    return latent_group_means(states[:, : d - 1], states[:, d - 1:], np.zeros(d), np.ones(d),
                              codes, [model.space.complete(c) for c in uniq])


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def match_expression(autoencoder, states, delta, target_effect, mean, std, *, steps: int = 150,
                     lr: float = 0.05, reg: float = 0.0, top: int | None = None,
                     max_cells: int = 256, seed: int = 0):
    """A latent shift whose decoded expression moves like ``target_effect``.

    ``states`` (n, d + 1): the start cells' standardised latent states (their cell type's
    control cells); ``delta`` (d + 1,): the latent baseline's shift (its starting point);
    ``target_effect`` (G,): the baseline's effect in mean log1p(normalize_total 1e4)
    expression (``engine.effects.baseline_for``). Adam on the latent part of the shift (the
    library part is kept) so that the decoder's mean expression of ``states + shift``, as
    log1p(1e4 * proportion), differs from that of ``states`` by ``target_effect`` (squared
    error over the genes). The latent sum of two singles' effects is not their sum in
    expression (the decoder is not linear); this puts the start where the expression-space
    baseline is. ``reg`` adds ``reg * mean((shift - delta)²)`` (a pull towards the latent
    baseline); ``top`` matches only the ``top`` genes of largest |target_effect|. Returns the
    shift, a (d + 1,) float32 array in standardised units.

    Measured on the CRISPR leave-one-double-out folds and not used by any shipped model
    (docs/results/crispr_lodo_match.txt): it helped one double and hurt another more."""
    import torch

    dev = next(autoencoder.parameters()).device

    def tensor(a):
        return torch.as_tensor(np.asarray(_numpy(a), np.float32), device=dev)

    x = tensor(states)
    if len(x) > max_cells:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=g)[:max_cells].to(dev)]
    mean, std = tensor(mean), tensor(std)
    d = x.shape[1] - 1
    target, start = tensor(target_effect), tensor(delta)
    decoder = autoencoder.decoder
    genes = (slice(None) if top is None or top >= len(target) else
             torch.argsort(target.abs(), descending=True)[:top])

    def lognorm_mean(s):                       # s: standardised states -> (G,)
        z = (s * std + mean)[:, :d]
        return torch.log1p(1e4 * torch.softmax(decoder(z), dim=-1)).mean(0)

    was_training = autoencoder.training
    autoencoder.eval()
    with torch.enable_grad():                      # also inside a caller's torch.no_grad()
        try:
            with torch.no_grad():
                base = lognorm_mean(x) + target
            shift = start[:d].clone().requires_grad_(True)
            opt = torch.optim.Adam([shift], lr=lr)
            lib = start[d:]
            for _ in range(steps):
                moved = x + torch.cat([shift, lib])
                loss = (lognorm_mean(moved) - base)[genes].pow(2).mean()
                if reg > 0:                        # stay near the latent baseline
                    loss = loss + reg * (shift - start[:d]).pow(2).mean()
                # the gradient of the shift alone: the decoder's weights are left untouched
                (shift.grad,) = torch.autograd.grad(loss, [shift])
                opt.step()
        finally:
            autoencoder.train(was_training)
    return torch.cat([shift.detach(), lib]).cpu().numpy().astype(np.float32)


def anchor_lines(config: dict) -> list[str]:
    """Sentences on the latent baseline (engine.anchor), one per evidence class the model's
    rule serves (empty without a rule): for the card and the app's model page."""
    a = (config.get("sampling") or {}).get("anchor")
    if not isinstance(a, dict):
        return []
    how = (f"refined by the flow from time {float(a.get('refine', 0)):g} at guidance "
           f"{float(a.get('guidance', 1)):g}" if float(a.get("refine", 0)) > 0 else
           "not refined by the flow")
    lines = []
    expr = a.get("match") == "expression"
    for kind in a.get("kinds", ["new_cell_type"]):
        if kind == "new_combination" and expr:
            start = ("New combinations start from the cell type's control cells moved, in the "
                     "latent space, until their decoded expression changes by the sum of the "
                     "singles' measured expression effects in that cell type")
        elif kind == "new_combination":
            start = ("New combinations start from the cell type's control cells plus the sum "
                     "of their singles' latent effects in that cell type")
        elif expr:
            start = (f"{str(kind).replace('_', ' ').capitalize()} conditions start from the "
                     "cell type's control cells moved, in the latent space, until their decoded "
                     "expression changes by the perturbation's mean measured effect elsewhere")
        else:
            start = (f"{str(kind).replace('_', ' ').capitalize()} conditions start from the "
                     "cell type's control cells plus the perturbation's mean latent effect "
                     f"where it was measured ({a.get('weights', 'uniform')} weights"
                     + ("; its direction averaged, its length the measured effects' mean "
                        "length" if a.get("magnitude") == "mean_norm" else "")
                     + (f", x{float(a['gain']):g}" if float(a.get("gain", 1.0)) != 1.0 else "")
                     + ")")
        lines.append(f"{start}, {how}.")
    if lines and a.get("source"):                  # once: it may cover several classes
        lines[-1] = f"{lines[-1][:-1]} (chosen: {a['source']})."
    return lines
