"""Train a model on a dataset: VAE with NB decoder first, then the latent generative model.

Phase 1 (``autoencoder``): fit the VAE on raw counts. Phase 2 (``flow``): encode every cell to
its latent mean + log library size, standardise, and fit the conditional velocity (or noise)
network with classifier-free-guidance dropout. Weights of phase 2 are an exponential moving
average. Nothing is written unless training finishes; cancel raises :class:`Cancelled`.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoint import FORMAT, FORMAT_VERSION, check_destination
from .conditions.vocab import Vocab, build_space
from .errors import DataError
from .progress import CancelToken, ProgressFn, Reporter, check_cancel

# ae_max_steps / ae_max_epochs: at 600 steps the autoencoder was the main source of infidelity;
# 10,000 steps (~40 s of CPU on 11k cells) raised the CRISPR model's held-out Pearson delta over
# clear effects from 0.752 to 0.834 and cut its energy ratio from 0.954 to 0.894
# (build_scripts/ablation.py, docs/results/ablation_crispr.txt).
DEFAULTS = dict(max_genes=5000, latent_dim=32, ae_hidden=128, ae_epochs=None, ae_max_steps=10000,
                ae_max_epochs=600,
                ae_lr=1e-3, kl_weight=0.5, batch_size=256, cond_dim=128, flow_steps=3000,
                flow_batch=256, flow_lr=1e-3, p_uncond=0.1, p_coarse=0.1, ema=0.998,
                objective="rectified_flow", steps=10, guidance=1.0, width=128, depth=4,
                dispersion="gene", latent_sampling=True)


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

    if steps < 20:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                               pct_start=warmup)


def train_model(adata, schema, out_dir: str | os.PathLike | None = None, *,
                backbone: str = "mlp", seed: int = 0, device: str = "auto",
                name: str | None = None, exclude: Sequence[Mapping[str, str]] = (),
                progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                data_file: str | None = None, overwrite: bool = False, **overrides):
    """Train a :class:`PerturbModel` on ``adata`` with the roles in ``schema``.

    ``overrides`` change the hyper-parameters in :data:`DEFAULTS`. With ``out_dir`` the model
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
    hp = dict(DEFAULTS)
    unknown = set(overrides) - set(hp)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    hp.update(overrides)
    if int(hp["flow_steps"]) < 1 or int(hp["ae_max_steps"]) < 1:
        raise ValueError("ae_max_steps and flow_steps must be at least 1")
    if backbone not in ("mlp", "transformer"):
        raise ValueError(f"backbone must be 'mlp' or 'transformer', got {backbone!r}")
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
    cols = select_genes(adata, counts, hp["max_genes"], keep=targets)
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
    space = build_space(uniq, vocab, control_label=schema.control_label,
                        has_dose=schema.dose_key is not None)
    arch = {"latent_dim": hp["latent_dim"], "ae_hidden": hp["ae_hidden"], "backbone": backbone,
            "dispersion": hp["dispersion"],
            "cond_dim": hp["cond_dim"], "objective": hp["objective"],
            "backbone_kw": ({"width": hp["width"], "depth": hp["depth"]} if backbone == "mlp"
                            else {"width": 64, "depth": 3, "tokens": 8, "heads": 4})}
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__,
              "name": name or (Path(out_dir).name if out_dir else "model"),
              "genes": genes, "architecture": arch, "vocab": vocab.to_dict(),
              "space": space.to_dict(), "schema": schema.to_dict(),
              "preprocessing": {
                  "counts_source": counts_source,
                  "gene_selection": ("all genes" if len(cols) == adata.n_vars else
                                     f"{len(cols)} highly variable genes (scanpy seurat flavour)"
                                     " + perturbed genes"),
                  "encoder_input": "log1p(counts / library * 1e4)",
                  "decoder": "negative binomial, mean = softmax(decoder(z)) * library, "
                             + ("per-gene dispersion" if hp["dispersion"] == "gene" else
                                "dispersion per gene and cell (per-gene value + offset from z)")},
              "sampling": {"steps": hp["steps"], "guidance": hp["guidance"], "batch_size": 2048},
              "density": float(counts.nnz / max(counts.shape[0] * counts.shape[1], 1))}
    ae, net = PerturbModel.build_modules({**config, "latent_stats": {}})
    ae, net = ae.to(dev), net.to(dev)

    # ---- phase 1: autoencoder ----------------------------------------------------------------
    gen = torch.Generator().manual_seed(seed)
    bs = min(hp["batch_size"], n_cells)
    per_epoch = max(n_cells // bs, 1)
    epochs = hp["ae_epochs"] or max(5, min(int(hp["ae_max_epochs"]),
                                            math.ceil(hp["ae_max_steps"] / per_epoch)))
    ae_steps = epochs * per_epoch
    report = Reporter(progress, ae_steps, "autoencoder", start=0.0, span=0.5)
    opt = torch.optim.AdamW(ae.parameters(), lr=hp["ae_lr"], weight_decay=1e-4)
    sched = _schedule(opt, hp["ae_lr"], ae_steps, warmup=0.1)
    ae.train()
    step, history = 0, {"autoencoder": [], "flow": []}
    for _epoch in range(epochs):
        order = torch.randperm(n_cells, generator=gen).numpy()
        for b in range(per_epoch):
            check_cancel(cancel)
            idx = np.sort(order[b * bs:(b + 1) * bs])
            x = torch.as_tensor(counts[idx].toarray(), device=dev)
            kl_w = hp["kl_weight"] * min(1.0, step / max(0.3 * ae_steps, 1))
            loss, _parts = ae.loss(x, kl_w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0 or step == ae_steps:
                lv = float(loss.detach()) / len(genes)
                history["autoencoder"].append((step, lv))
                report(step, loss=lv)
    ae.eval()

    # ---- latent states -----------------------------------------------------------------------
    # With latent_sampling, the flow learns the aggregate posterior: every time a cell is drawn,
    # its latent is a fresh sample of q(z | x), the distribution the decoder was trained to
    # decode. Decoding posterior means instead loses, by Jensen's inequality, the expression of
    # genes that are nearly off (K562 cells in the CRISPR data: 11 detected genes per cell
    # instead of the real 15.5; build_scripts/detected_genes.py).
    with torch.no_grad():
        mus, sds, libs = [], [], []
        for s in range(0, n_cells, 2048):
            x = torch.as_tensor(counts[s:s + 2048].toarray(), device=dev)
            mu, logvar = ae.encode(x)
            mus.append(mu)
            sds.append(torch.exp(0.5 * logvar) if hp["latent_sampling"] else torch.zeros_like(mu))
            libs.append(torch.log(x.sum(1, keepdim=True).clamp_min(1)))
        mus, sds, libs = torch.cat(mus), torch.cat(sds), torch.cat(libs)
        spread = torch.cat([mus + sds * torch.randn(mus.shape, generator=gen).to(dev), libs], 1)
    mean, std = spread.mean(0), spread.std(0).clamp_min(1e-3)

    def latent_batch(idx):
        i = idx.to(dev)
        z = mus[i] + sds[i] * torch.randn(mus[i].shape, generator=gen).to(dev)
        return ((torch.cat([z, libs[i]], 1) - mean) / std).float()

    config["latent_stats"] = {"mean": mean.cpu().tolist(), "std": std.cpu().tolist()}

    # ---- phase 2: latent generative model ------------------------------------------------------
    from .diffusion.schedules import OBJECTIVES

    objective = OBJECTIVES[hp["objective"]]()
    fsteps, fbs = hp["flow_steps"], min(hp["flow_batch"], n_cells)
    report = Reporter(progress, fsteps, "flow", start=0.5, span=0.5)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=hp["flow_lr"], weight_decay=0.0)
    sched = _schedule(opt, hp["flow_lr"], fsteps, warmup=0.05)
    lv_t = torch.as_tensor(conds_arr.levels)
    tg_t = torch.as_tensor(conds_arr.targets)
    ty_t = torch.as_tensor(conds_arr.types)
    do_t = torch.as_tensor(conds_arr.doses)
    n_levels = lv_t.shape[1]
    net.train()
    for step in range(1, fsteps + 1):
        check_cancel(cancel)
        idx = torch.randint(0, n_cells, (fbs,), generator=gen)
        levels = lv_t[idx].clone()
        null = torch.zeros(fbs, dtype=torch.bool)
        u = torch.rand(fbs, generator=gen)
        drop_all = u < hp["p_uncond"]
        levels[drop_all] = 0
        null |= drop_all
        if n_levels:
            coarse = (u >= hp["p_uncond"]) & (u < hp["p_uncond"] + hp["p_coarse"])
            cut = torch.randint(0, n_levels, (fbs,), generator=gen)
            mask = torch.arange(n_levels)[None, :] >= cut[:, None]
            levels[coarse[:, None] & mask] = 0
        x0 = latent_batch(idx)
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
            decay = min(hp["ema"], (1 + step) / (10 + step))
            for pe, pn in zip(ema.parameters(), net.parameters(), strict=False):
                pe.lerp_(pn, 1 - decay)
        if step % 20 == 0 or step == fsteps:
            history["flow"].append((step, float(loss.detach())))
            report(step, loss=float(loss.detach()))
    check_cancel(cancel)

    seconds = time.perf_counter() - t_start
    config["training"] = {
        "data_file": data_file or "", "n_cells": int(n_cells), "n_genes": len(genes),
        "n_conditions": len(uniq), "exclude": [dict(r) for r in exclude], "seed": int(seed),
        "device": dev, "seconds": round(seconds, 1), "ae_epochs": int(epochs),
        "flow_steps": int(fsteps), "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "hardware": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "hyperparameters": {k: v for k, v in hp.items()}}
    card = {"name": config["name"], "training": config["training"],
            "conditions": space.to_dict(), "genes": genes, "metrics": [],
            "loss_history": history}
    model = PerturbModel(config, ae.cpu(), ema.cpu(), card=card, device=dev)
    if out_dir is not None:
        model.save(out_dir, card=card, overwrite=overwrite)
    return model
