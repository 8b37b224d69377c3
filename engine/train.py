"""Train a model on a dataset: VAE with NB decoder first, then the latent generative model.

Phase 1 (``autoencoder``): fit the VAE on raw counts. Phase 2 (``flow``): encode every cell to
its latent mean + log library size, standardise, and fit the conditional velocity (or noise)
network with classifier-free-guidance dropout. Weights of phase 2 are an exponential moving
average. Nothing is written unless training finishes; cancel raises :class:`Cancelled`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoint import FORMAT, FORMAT_VERSION, check_destination
from .conditions.vocab import Vocab, build_space
from .config import ModelConfig, TrainConfig
from .errors import DataError
from .progress import CancelToken, ProgressFn, Reporter, check_cancel
from .reference import Reference


def member_seeds(seed: int, members: int) -> list[int]:
    """The seed of each ensemble member: the run's seed, then seed + 1000 * k."""
    return [int(seed)] + [int(seed) + 1000 * k for k in range(1, members)]


def bootstrap_rows(codes: np.ndarray, seed: int) -> np.ndarray:
    """A bootstrap of the cells within each condition: for every condition group, as many of
    its cells drawn with replacement as it has (so every condition keeps its weight)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        out.append(rng.choice(rows, len(rows), replace=True))
    return np.sort(np.concatenate(out))


def apply_excludes(adata, exclude: Sequence[Mapping[str, str]]):
    """Drop the cells that match all KEY=VALUE pairs of any one exclude rule."""
    if not exclude:
        return adata
    keep = np.ones(adata.n_obs, bool)
    for rule in exclude:
        hit = np.ones(adata.n_obs, bool)
        for key, value in rule.items():
            if key not in adata.obs:
                raise DataError(f"--exclude: no obs column {key!r}; columns are: "
                                f"{', '.join(map(str, adata.obs.columns))}")
            col = adata.obs[key].astype(str).to_numpy()
            if value not in set(col):
                raise DataError(f"--exclude: value {value!r} never occurs in column {key!r}")
            hit &= col == value
        keep &= ~hit
    if not keep.any():
        raise DataError("--exclude removes every cell")
    return adata[keep].copy()


def select_genes(adata, counts, max_genes: int, keep: Sequence[str] = ()) -> np.ndarray:
    """Column indices of the genes the model uses: all genes when there are at most
    ``max_genes``, else the most highly variable (scanpy 'seurat' flavour on log-normalised
    counts) plus any perturbation target that is a measured gene."""
    n = counts.shape[1]
    if n <= max_genes:
        return np.arange(n)
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(counts.astype(np.float32).copy())
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, n_top_genes=max_genes, flavor="seurat")
    chosen = set(np.flatnonzero(tmp.var["highly_variable"].to_numpy()).tolist())
    names = {str(g): i for i, g in enumerate(adata.var_names)}
    chosen |= {names[g] for g in keep if g in names}
    return np.array(sorted(chosen))


def _schedule(opt, lr: float, steps: int, warmup: float):
    """One-cycle learning rate (warm-up, then cosine decay); constant for very short runs."""
    import torch

    if steps < 20 or warmup * steps < 2:      # OneCycleLR divides by a zero-length warm-up
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                               pct_start=warmup)


def train_model(adata, schema, out_dir: str | os.PathLike | None = None, *,
                backbone: str = "mlp", seed: int = 0, device: str = "auto",
                name: str | None = None, exclude: Sequence[Mapping[str, str]] = (),
                progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                data_file: str | None = None, overwrite: bool = False, **overrides):
    """Train a :class:`PerturbModel` on ``adata`` with the roles in ``schema``.

    ``overrides`` change the defaults of :class:`engine.config.ModelConfig` by their flat
    names (:meth:`ModelConfig.from_overrides`; unknown names raise TypeError). With ``out_dir`` the model
    folder is written (atomically) when training completes. ``out_dir`` is checked before any
    work (:func:`engine.checkpoint.check_destination`): it must be new, empty, or (only with
    ``overwrite``) an existing Perturb Studio model folder; anything else raises
    :class:`ModelError` and nothing is touched.
    """
    import torch

    from .data.io import get_counts
    from .device import resolve_device
    from .model import PerturbModel

    if out_dir is not None:
        check_destination(out_dir, overwrite=overwrite)
    prior_mode = overrides.pop("target_prior", "auto")
    if prior_mode not in ("auto", "gene_sets", "none"):
        raise ValueError(f"target_prior must be auto, gene_sets or none, got {prior_mode!r}")
    overrides.pop("prior_dim", None)                  # set by the priors, never by hand
    mc = ModelConfig.from_overrides(backbone, **overrides)
    hp = mc.hyperparameters()
    t_start = time.perf_counter()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed)

    adata = apply_excludes(adata, exclude)
    adata = schema.filter(adata)
    codes, uniq = schema.condition_codes(adata)
    counts, counts_source = get_counts(adata)
    counts = counts.tocsr().astype(np.float32)
    targets = sorted({p.target for c in uniq for p in c.perturbations})
    cols = select_genes(adata, counts, mc.train.max_genes, keep=targets)
    counts = counts[:, cols]
    genes = [str(g) for g in adata.var_names[cols]]
    lib = np.asarray(counts.sum(axis=1)).ravel()
    if (lib <= 0).any():
        keep = lib > 0
        counts, codes, lib = counts[keep], codes[keep], lib[keep]
    n_cells = counts.shape[0]
    if n_cells < 20:
        raise DataError(f"only {n_cells} cells with counts remain; at least 20 are needed")

    vocab = Vocab.from_conditions(uniq, schema.context_keys)
    conds_arr = vocab.encode(uniq).take(codes)
    prior_table, priors_entry = target_priors_for(prior_mode, vocab.targets)
    if prior_table is not None:
        mc = dataclasses.replace(mc, arch=dataclasses.replace(
            mc.arch, target_prior="gene_sets", prior_dim=priors_entry["dims"]))
        hp = mc.hyperparameters()
    space = build_space(uniq, vocab, control_label=schema.control_label,
                        has_dose=schema.dose_key is not None)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__,
              "name": name or (Path(out_dir).name if out_dir else "model"),
              "genes": genes, "architecture": mc.arch.to_dict(), "vocab": vocab.to_dict(),
              "space": space.to_dict(), "schema": schema.to_dict(),
              "preprocessing": {
                  "counts_source": counts_source,
                  "gene_selection": ("all genes" if len(cols) == adata.n_vars else
                                     f"{len(cols)} highly variable genes (scanpy seurat flavour)"
                                     " + perturbed genes"),
                  "encoder_input": "log1p(counts / library * 1e4)",
                  "decoder": "negative binomial, mean = softmax(decoder(z)) * library, "
                             + ("per-gene dispersion" if mc.arch.dispersion == "gene" else
                                "dispersion per gene and cell (per-gene value + offset from z)")},
              "sampling": mc.sampling.to_dict(),
              "density": float(counts.nnz / max(counts.shape[0] * counts.shape[1], 1))}
    if priors_entry is not None:
        config["target_priors"] = priors_entry
    k_members = int(mc.train.members)
    seeds = member_seeds(seed, k_members)
    if k_members > 1:
        config["ensemble"] = {"members": k_members, "seeds": seeds,
                              "bootstrap": bool(mc.train.bootstrap), "shared": "autoencoder",
                              "calibration": {}}
    ae, net = PerturbModel.build_modules({**config, "latent_stats": {}})
    install_prior_table(net, prior_table)
    ae, net = ae.to(dev), net.to(dev)

    gen = torch.Generator().manual_seed(seed)
    epochs, ae_history = fit_autoencoder(ae, counts, mc.train, gen, dev, progress, cancel)
    states = LatentStates.encode(ae, counts, mc.train, gen, dev)
    config["latent_stats"] = {"mean": states.mean.cpu().tolist(),
                              "std": states.std.cpu().tolist()}
    emas, flow_history = [], {}
    for m in range(k_members):
        if m == 0:                   # member 0 continues the run (K = 1: exactly as before)
            m_net, m_gen, m_states = net, gen, states
        else:
            torch.manual_seed(seeds[m])
            m_net = PerturbModel.build_net(config)
            install_prior_table(m_net, prior_table)
            m_net = m_net.to(dev)
            m_gen = torch.Generator().manual_seed(seeds[m])
            m_states = dataclasses.replace(states, gen=m_gen)
        pool = bootstrap_rows(codes, seeds[m]) if k_members > 1 and mc.train.bootstrap \
            else None
        span = 0.5 / k_members
        ema, hist = fit_flow(m_net, m_states, conds_arr, mc, m_gen, dev, progress, cancel,
                             pool=pool, start=0.5 + m * span, span=span,
                             phase="flow" if k_members == 1 else
                             f"flow (member {m + 1} of {k_members})")
        emas.append(ema.cpu())
        flow_history["flow" if m == 0 else f"flow_member{m}"] = hist
    history = {"autoencoder": ae_history, **flow_history}
    fsteps = mc.train.flow_steps
    check_cancel(cancel)
    reference = Reference.build(counts, codes, [space.complete(c) for c in uniq], seed=seed)

    seconds = time.perf_counter() - t_start
    config["training"] = {
        "data_file": data_file or "", "n_cells": int(n_cells), "n_genes": len(genes),
        "n_conditions": len(uniq), "exclude": [dict(r) for r in exclude], "seed": int(seed),
        "device": dev, "seconds": round(seconds, 1), "ae_epochs": int(epochs),
        "flow_steps": int(fsteps), "members": k_members, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "hardware": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "hyperparameters": {k: v for k, v in hp.items()}}
    card = {"name": config["name"], "training": config["training"],
            "conditions": space.to_dict(), "genes": genes, "metrics": [],
            "loss_history": history}
    model = PerturbModel(config, ae.cpu(), emas, card=card, device=dev, reference=reference)
    if out_dir is not None:
        model.save(out_dir, card=card, overwrite=overwrite)
    return model


#: Fewest fraction of a dataset's perturbation targets the gene priors must know for
#: ``target_prior="auto"`` to turn the priors on (targets that are gene symbols).
AUTO_PRIOR_FRACTION = 0.5


def target_priors_for(mode: str, targets: Sequence[str]):
    """The prior table (len(targets) + 1, dims + 1) of a training's targets and the config
    entry ``target_priors``, or (None, None) without target priors.

    ``mode``: ``"none"``; ``"gene_sets"`` (the priors must be readable); ``"auto"``: gene-set
    priors when at least :data:`AUTO_PRIOR_FRACTION` of the targets are genes the priors know
    (the targets are gene symbols, not drugs or "stimulated") and the resource is there."""
    from .priors import FORMAT_VERSION as PRIORS_VERSION
    from .priors import load_gene_priors, target_prior_rows

    if mode == "none" or not targets:
        return None, None
    try:
        priors = load_gene_priors()
    except DataError:
        if mode == "gene_sets":
            raise
        return None, None
    rows, symbols = target_prior_rows(priors, list(targets))
    known = sum(s is not None for s in symbols)
    if mode == "auto" and known < AUTO_PRIOR_FRACTION * len(targets):
        return None, None
    table = np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows])
    entry = {"resource": "gene_priors", "format_version": PRIORS_VERSION,
             "dims": priors.dims, "n_genes": len(priors), "sha256": priors.fingerprint,
             "symbols": symbols,
             "note": "prior_table in model.safetensors holds these rows; a gene never "
                     "perturbed in training takes its row from the resource (same sha256)"}
    return table, entry


def install_prior_table(net, table) -> None:
    """Copy the prior rows into a fresh flow network (no-op without target priors)."""
    if table is None:
        return
    import torch

    net.cond.perturbation.prior_table.copy_(torch.as_tensor(table))


# -- phase 1: autoencoder ---------------------------------------------------------------------
def fit_autoencoder(ae, counts, tc: TrainConfig, gen, dev: str, progress: ProgressFn | None,
                    cancel: CancelToken | None) -> tuple[int, list]:
    """Fit the VAE on the raw counts (CSR, cells x genes) in place; return the number of epochs
    and the loss history [(step, loss per gene)]. Progress spans the first half."""
    import torch

    n_cells, n_genes = counts.shape
    bs = min(tc.batch_size, n_cells)
    per_epoch = max(n_cells // bs, 1)
    epochs = tc.ae_epochs or max(5, min(int(tc.ae_max_epochs),
                                        math.ceil(tc.ae_max_steps / per_epoch)))
    ae_steps = epochs * per_epoch
    report = Reporter(progress, ae_steps, "autoencoder", start=0.0, span=0.5)
    opt = torch.optim.AdamW(ae.parameters(), lr=tc.ae_lr, weight_decay=1e-4)
    sched = _schedule(opt, tc.ae_lr, ae_steps, warmup=0.1)
    ae.train()
    step, history = 0, []
    for _epoch in range(epochs):
        order = torch.randperm(n_cells, generator=gen).numpy()
        for b in range(per_epoch):
            check_cancel(cancel)
            idx = np.sort(order[b * bs:(b + 1) * bs])
            x = torch.as_tensor(counts[idx].toarray(), device=dev)
            kl_w = tc.kl_weight * min(1.0, step / max(0.3 * ae_steps, 1))
            loss, _parts = ae.loss(x, kl_w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0 or step == ae_steps:
                lv = float(loss.detach()) / n_genes
                history.append((step, lv))
                report(step, loss=lv)
    ae.eval()
    return int(epochs), history


# -- latent states ----------------------------------------------------------------------------
@dataclass
class LatentStates:
    """Every cell's posterior (mean, sd) and log library size, and the standardisation.

    With ``latent_sampling``, the flow learns the aggregate posterior: every time a cell is
    drawn, its latent is a fresh sample of q(z | x), the distribution the decoder was trained to
    decode. Decoding posterior means instead loses, by Jensen's inequality, the expression of
    genes that are nearly off (K562 cells in the CRISPR data: 11 detected genes per cell instead
    of the real 15.5; build_scripts/detected_genes.py)."""

    mus: object
    sds: object
    libs: object
    mean: object
    std: object
    gen: object

    @classmethod
    def encode(cls, ae, counts, tc: TrainConfig, gen, dev: str) -> LatentStates:
        import torch

        with torch.no_grad():
            mus, sds, libs = [], [], []
            for s in range(0, counts.shape[0], 2048):
                x = torch.as_tensor(counts[s:s + 2048].toarray(), device=dev)
                mu, logvar = ae.encode(x)
                mus.append(mu)
                sds.append(torch.exp(0.5 * logvar) if tc.latent_sampling
                           else torch.zeros_like(mu))
                libs.append(torch.log(x.sum(1, keepdim=True).clamp_min(1)))
            mus, sds, libs = torch.cat(mus), torch.cat(sds), torch.cat(libs)
            spread = torch.cat([mus + sds * torch.randn(mus.shape, generator=gen).to(dev),
                                libs], 1)
        return cls(mus, sds, libs, spread.mean(0), spread.std(0).clamp_min(1e-3), gen)

    def __len__(self) -> int:
        return int(self.mus.shape[0])

    def batch(self, idx):
        """Standardised latent states of cells ``idx``, a fresh posterior sample each call."""
        import torch

        i = idx.to(self.mus.device)
        z = self.mus[i] + self.sds[i] * torch.randn(self.mus[i].shape,
                                                    generator=self.gen).to(self.mus.device)
        return ((torch.cat([z, self.libs[i]], 1) - self.mean) / self.std).float()


# -- phase 2: latent generative model ---------------------------------------------------------
def fit_flow(net, states: LatentStates, conds_arr, mc: ModelConfig, gen, dev: str,
             progress: ProgressFn | None, cancel: CancelToken | None, *,
             pool: np.ndarray | None = None, start: float = 0.5, span: float = 0.5,
             phase: str = "flow"):
    """Fit the conditional velocity / noise network with classifier-free-guidance dropout (all
    levels with ``p_uncond``, the finer levels with ``p_coarse``); return the exponential moving
    average of its weights and the loss history. Progress spans ``start`` .. ``start + span``.

    ``pool``: the rows to draw minibatches from (an ensemble member's bootstrap,
    :func:`bootstrap_rows`); all cells when None."""
    import torch

    from .diffusion.schedules import OBJECTIVES

    tc = mc.train
    objective = OBJECTIVES[mc.arch.objective]()
    n_cells = len(states) if pool is None else len(pool)
    pool_t = None if pool is None else torch.as_tensor(pool, dtype=torch.int64)
    fsteps, fbs = tc.flow_steps, min(tc.flow_batch, n_cells)
    report = Reporter(progress, fsteps, phase, start=start, span=span)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.flow_lr, weight_decay=0.0)
    sched = _schedule(opt, tc.flow_lr, fsteps, warmup=0.05)
    lv_t = torch.as_tensor(conds_arr.levels)
    tg_t = torch.as_tensor(conds_arr.targets)
    ty_t = torch.as_tensor(conds_arr.types)
    do_t = torch.as_tensor(conds_arr.doses)
    n_levels = lv_t.shape[1]
    history = []
    if mc.arch.target_prior != "none":
        net.cond.perturbation.learned_dropout = float(tc.target_dropout)
    net.train()
    for step in range(1, fsteps + 1):
        check_cancel(cancel)
        idx = torch.randint(0, n_cells, (fbs,), generator=gen)
        if pool_t is not None:
            idx = pool_t[idx]
        levels = lv_t[idx].clone()
        null = torch.zeros(fbs, dtype=torch.bool)
        u = torch.rand(fbs, generator=gen)
        drop_all = u < tc.p_uncond
        levels[drop_all] = 0
        null |= drop_all
        if n_levels:
            coarse = (u >= tc.p_uncond) & (u < tc.p_uncond + tc.p_coarse)
            cut = torch.randint(0, n_levels, (fbs,), generator=gen)
            mask = torch.arange(n_levels)[None, :] >= cut[:, None]
            levels[coarse[:, None] & mask] = 0
        x0 = states.batch(idx)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = objective.sample_t(fbs, gen).to(dev)
        xt, target = objective.corrupt(x0, noise, t)
        c = net.embed(levels.to(dev), tg_t[idx].to(dev), ty_t[idx].to(dev),
                      do_t[idx].to(dev), null.to(dev))
        loss = torch.nn.functional.mse_loss(net(xt, t, c), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(tc.ema, (1 + step) / (10 + step))
            for pe, pn in zip(ema.parameters(), net.parameters(), strict=False):
                pe.lerp_(pn, 1 - decay)
        if step % 20 == 0 or step == fsteps:
            history.append((step, float(loss.detach())))
            report(step, loss=float(loss.detach()))
    return ema, history
