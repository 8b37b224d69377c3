"""Train a model on a dataset: VAE with NB decoder first, then the latent generative model.

Phase 1 (``autoencoder``): fit the VAE on raw counts. Phase 2 (``flow``): encode every cell to
its latent mean + log library size, standardise, and fit the conditional velocity (or noise)
network with classifier-free-guidance dropout. Weights of phase 2 are an exponential moving
average. Nothing is written unless training finishes; cancel raises :class:`Cancelled`.

Scale (``docs/results/scale.txt``): the counts come from a *source*, :class:`MemoryCounts`
(a CSR matrix in memory, today's path, unchanged) or :class:`StreamCounts` (minibatches read
from a backed h5ad, :mod:`engine.data.stream`), chosen by what ``train_model`` is given (an
AnnData or a :class:`engine.data.stream.BackedDataset`). The budget follows the data size
(:func:`training_budget`). Under ``torchrun`` every rank trains on its own shard of every
minibatch and the gradients are averaged (:mod:`engine.distributed`); rank 0 alone writes.
With a checkpoint folder, the state is saved every few minutes and on cancel
(:mod:`engine.resume`), and ``resume=True`` continues from it.
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
from .anchor import KANG_RULE, latent_group_means
from .checkpoint import FORMAT, FORMAT_VERSION, check_destination
from .conditions.vocab import Vocab, build_space
from .config import ModelConfig, TrainConfig
from .distributed import SINGLE, Dist
from .errors import Cancelled, DataError, ModelError
from .nn.specs import BACKBONE_SPECS
from .progress import CancelToken, ProgressFn, Reporter, check_cancel
from .reference import Reference
from .resume import (
    Checkpointer,
    load_module,
    load_optimizer_state,
    module_tensors,
    optimizer_state,
)


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


# -- the budget -------------------------------------------------------------------------------
#: Above this many cells the default budget scales with the data (TrainConfig.scale_budget).
SCALE_FROM_CELLS = 100_000
#: The default autoencoder budget never exceeds this many steps (12.8 M cells seen at batch
#: 256, reached at about 2.56 M cells where the 5-epoch floor would ask for more).
AE_STEP_CAP = 50_000
#: The default flow budget grows at most this many times.
FLOW_GROWTH_CAP = 10


@dataclass(frozen=True)
class Budget:
    ae_steps: int
    ae_epochs: int
    per_epoch: int
    flow_steps: int
    rule: str


def training_budget(tc: TrainConfig, n_cells: int) -> Budget:
    """The steps of both phases for ``n_cells`` training cells.

    - Autoencoder: ``ae_steps`` when given; else ``ae_epochs`` epochs; else (today's rule)
      ``clamp(ceil(ae_max_steps / batches per epoch), 5, ae_max_epochs)`` epochs, which is
      about 10,000 steps from 3,000 to 512,000 cells and 5 epochs above; with ``scale_budget``
      at most :data:`AE_STEP_CAP` steps (from about 2.56 M cells on).
    - Flow: ``flow_steps``; with ``scale_budget`` and more than :data:`SCALE_FROM_CELLS` cells,
      ``flow_steps * sqrt(n_cells / SCALE_FROM_CELLS)``, at most :data:`FLOW_GROWTH_CAP` times.

    Up to :data:`SCALE_FROM_CELLS` cells the budget is exactly the one of earlier versions
    (every shipped model was trained on fewer cells)."""
    n_cells = int(n_cells)
    bs = min(tc.batch_size, n_cells)
    per_epoch = max(n_cells // max(bs, 1), 1)
    if tc.ae_steps:
        ae_steps = int(tc.ae_steps)
        rule = f"autoencoder {ae_steps} steps (given)"
    elif tc.ae_epochs:
        ae_steps = int(tc.ae_epochs) * per_epoch
        rule = f"autoencoder {tc.ae_epochs} epochs (given)"
    else:
        epochs = max(5, min(int(tc.ae_max_epochs), math.ceil(tc.ae_max_steps / per_epoch)))
        ae_steps = epochs * per_epoch
        rule = f"autoencoder clamp(ceil({tc.ae_max_steps} / {per_epoch}), 5, " \
               f"{tc.ae_max_epochs}) epochs"
        if tc.scale_budget and ae_steps > AE_STEP_CAP:
            ae_steps = AE_STEP_CAP
            rule += f", capped at {AE_STEP_CAP} steps"
    flow = int(tc.flow_steps)
    if tc.scale_budget and n_cells > SCALE_FROM_CELLS:
        flow = min(FLOW_GROWTH_CAP * flow,
                   int(round(flow * math.sqrt(n_cells / SCALE_FROM_CELLS))))
        rule += f"; flow {tc.flow_steps} * sqrt({n_cells} / {SCALE_FROM_CELLS}) steps"
    else:
        rule += f"; flow {flow} steps"
    return Budget(ae_steps, math.ceil(ae_steps / per_epoch), per_epoch, flow, rule)


# -- where the counts come from ---------------------------------------------------------------
class MemoryCounts:
    """Counts in memory (float32 CSR, cells x model genes): the minibatches of earlier
    versions, a permutation of the cells per epoch from the run's generator."""

    streaming = False

    def __init__(self, counts) -> None:
        self.counts = counts
        self.shape = counts.shape
        self.epoch_state: tuple[int, object] | None = None   # (epoch, generator state at start)

    def ae_batches(self, bs: int, per_epoch: int, gen, start: int = 0, dist: Dist = SINGLE,
                   epoch: int | None = None):
        """Dense minibatches (numpy), from step ``start`` on; forever. Each rank of a
        data-parallel run takes its share of every minibatch (rows rank, rank + K, ...).
        ``epoch``: on resume, the epoch whose starting generator state ``gen`` holds."""
        import torch

        if epoch is None:
            epoch, pos = divmod(int(start), per_epoch)
        else:
            pos = int(start) - epoch * per_epoch
        n = self.shape[0]
        while True:
            self.epoch_state = (epoch, gen.get_state().clone())
            order = torch.randperm(n, generator=gen).numpy()
            for b in range(pos, per_epoch):
                idx = np.sort(order[b * bs:(b + 1) * bs])
                if dist.active:
                    idx = idx[dist.rank::dist.world]
                yield self.counts[idx].toarray()
            pos, epoch = 0, epoch + 1

    def blocks(self, lo: int, hi: int, size: int = 2048):
        for s in range(lo, hi, size):
            yield self.counts[s:min(s + size, hi)].toarray()

    def reference(self, codes, conditions, seed: int) -> Reference:
        return Reference.build(self.counts, codes, conditions, seed=seed)


class StreamCounts:
    """Counts read from a backed h5ad (:class:`engine.data.stream.H5adCounts`): the training
    cells are file rows ``rows`` (sorted), the model genes columns ``cols`` (None: all).
    Minibatches are block-shuffled (:class:`engine.data.stream.BlockShuffler`), read and made
    dense by a background thread (:class:`engine.data.stream.Prefetcher`)."""

    streaming = True

    def __init__(self, h5, rows: np.ndarray, cols: np.ndarray | None, *, seed: int = 0,
                 pin: bool = False) -> None:
        self.h5, self.rows, self.cols, self.seed, self.pin = h5, rows, cols, seed, pin
        self.shape = (len(rows), h5.n_vars if cols is None else len(cols))
        self.epoch_state = None
        self._prefetch = None

    def _cut(self, m):
        return m if self.cols is None else m[:, self.cols]

    def take(self, positions: np.ndarray):
        """The counts of cells at ``positions`` (float32 CSR over the model genes)."""
        return self._cut(self.h5.take(self.rows[positions]))

    def chunks(self, positions: np.ndarray | None = None, size: int = 8192):
        """(positions, CSR) of consecutive chunks of ``positions`` (all cells if None)."""
        pos = np.arange(self.shape[0]) if positions is None else positions
        for s in range(0, len(pos), size):
            p = pos[s:s + size]
            yield p, self.take(p)

    def ae_batches(self, bs: int, per_epoch: int, gen, start: int = 0, dist: Dist = SINGLE,
                   epoch: int | None = None):
        from .data.stream import BlockShuffler, Prefetcher

        per_rank = max(1, math.ceil(bs / dist.world))
        shuffler = BlockShuffler(self.shape[0], per_rank, seed=self.seed, rank=dist.rank,
                                 world=dist.world)

        def items():
            skip, epoch = int(start), 0
            while True:
                for pos, parts in shuffler.epoch(epoch):
                    if skip >= len(parts):
                        skip -= len(parts)
                        continue
                    m = self.take(pos)
                    for p in parts[skip:]:
                        yield m[p].toarray()
                    skip = 0
                epoch += 1

        self.close()
        self._prefetch = Prefetcher(items(), lambda x: x, pin=self.pin)
        return iter(self._prefetch)

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def blocks(self, lo: int, hi: int, size: int = 8192):
        """CSR blocks (encoded sparse, :func:`encode_sparse`: no dense copy of the counts)."""
        for s in range(lo, hi, size):
            yield self.take(np.arange(s, min(s + size, hi)))

    def reference(self, codes, conditions, seed: int) -> Reference:
        return Reference.build_streaming(self.chunks(), codes, conditions, self.take, seed=seed)


@dataclass
class RunContext:
    """How a run is carried out, beside what it learns: the data-parallel group, the resumable
    checkpoint (and the one to resume from), mixed precision, and the run's fingerprint (the
    checkpoint of another run is refused)."""

    dist: Dist = SINGLE
    ckpt: Checkpointer | None = None
    resume: tuple[dict, dict] | None = None
    amp: bool = False
    fingerprint: dict = dataclasses.field(default_factory=dict)
    carry: dict = dataclasses.field(default_factory=dict)      # tensors in every checkpoint
    carry_meta: dict = dataclasses.field(default_factory=dict)  # JSON in every checkpoint

    def save(self, meta: dict, tensors: dict) -> None:
        if self.ckpt is not None:
            import torch

            self.ckpt.save({**self.carry_meta, **meta, "fingerprint": self.fingerprint},
                           {**self.carry, **tensors, "rng.torch": torch.get_rng_state()})

    def due(self) -> bool:
        return self.ckpt is not None and self.ckpt.due()

    def resume_phase(self) -> str | None:
        return None if self.resume is None else self.resume[0].get("phase")


def _autocast(dev: str, amp: bool):
    import contextlib

    import torch

    if amp and dev.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_memory(adata, schema, mc: ModelConfig):
    """Conditions, counts (cut to the model genes), library sizes from an in-memory AnnData:
    the path of earlier versions."""
    from .data.io import get_counts

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
    density = float(counts.nnz / max(counts.shape[0] * counts.shape[1], 1))
    return (MemoryCounts(counts), codes, uniq, genes, counts_source, len(cols) == adata.n_vars,
            density)


def _prepare_stream(ds, schema, mc: ModelConfig, seed: int, dev: str, progress, cancel):
    """The same from a :class:`engine.data.stream.BackedDataset`, never holding the counts:
    one scan for library sizes and gene statistics (and the integer check), the gene selection
    from the statistics (:func:`engine.data.stream.hvg_seurat`), and, when genes were
    selected, a second pass for the library sizes over the chosen genes."""
    from .data.stream import hvg_seurat, scan

    codes, uniq = schema.condition_codes(ds)
    h5 = ds.counts
    stats = scan(h5, ds.rows, progress=progress, cancel=cancel)
    targets = sorted({p.target for c in uniq for p in c.perturbations})
    if h5.n_vars <= mc.train.max_genes:
        cols, lib, nnz = None, stats.lib, stats.nnz
    else:
        chosen = set(hvg_seurat(stats, mc.train.max_genes).tolist())
        names = {str(g): i for i, g in enumerate(h5.var_names)}
        chosen |= {names[g] for g in targets if g in names}
        cols = np.array(sorted(chosen))
        lib, nnz = np.zeros(len(ds.rows)), 0
        src = StreamCounts(h5, ds.rows, cols)
        for p, m in src.chunks():
            check_cancel(cancel)
            lib[p] = np.asarray(m.sum(axis=1)).ravel()
            nnz += m.nnz
    rows = ds.rows
    if (lib <= 0).any():
        keep = lib > 0
        rows, codes = rows[keep], codes[keep]
    n_genes = h5.n_vars if cols is None else len(cols)
    genes = [str(g) for g in (h5.var_names if cols is None else h5.var_names[cols])]
    density = float(nnz / max(len(ds.rows) * n_genes, 1))
    src = StreamCounts(h5, rows, cols, seed=seed, pin=dev.startswith("cuda"))
    return src, codes, uniq, genes, h5.source, cols is None, density


def _advance(sched, steps: int) -> None:
    """Step a fresh learning-rate schedule to where a resumed run stopped."""
    import warnings

    with warnings.catch_warnings():        # stepping before any optimizer.step() is intended
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(int(steps)):
            sched.step()


def train_model(adata, schema, out_dir: str | os.PathLike | None = None, *,
                backbone: str = "mlp", seed: int = 0, device: str = "auto",
                name: str | None = None, exclude: Sequence[Mapping[str, str]] = (),
                progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                data_file: str | None = None, overwrite: bool = False,
                dist: Dist | None = None, checkpoint_dir: str | os.PathLike | None = None,
                checkpoint_every: float = 300.0, resume: bool = False, **overrides):
    """Train a :class:`PerturbModel` on ``adata`` with the roles in ``schema``.

    ``overrides`` change the defaults of :class:`engine.config.ModelConfig` by their flat
    names (:meth:`ModelConfig.from_overrides`; unknown names raise TypeError). With ``out_dir`` the model
    folder is written (atomically) when training completes. ``out_dir`` is checked before any
    work (:func:`engine.checkpoint.check_destination`): it must be new, empty, or (only with
    ``overwrite``) an existing Perturb Studio model folder; anything else raises
    :class:`ModelError` and nothing is touched.

    ``adata`` may be a :class:`engine.data.stream.BackedDataset` (the counts stay on disk,
    minibatches are streamed). ``dist``: the data-parallel group (:mod:`engine.distributed`;
    only rank 0 writes). ``checkpoint_dir``: where a resumable checkpoint is written every
    ``checkpoint_every`` seconds and on cancel (default ``<out_dir>.partial`` when ``out_dir``
    is given); ``resume`` continues from it.

    ``anchor`` (an override): record :data:`engine.anchor.KANG_RULE` in ``sampling.anchor``,
    so a cell type never seen with a perturbation starts from its control cells plus the
    effect measured in the most similar cell types (chosen on Kang's leave-one-cell-type-out
    folds, and ahead of the flow alone on every CRISPR gene held out in one cell line too:
    docs/results/anchor_kang_loo.txt, docs/results/crispr_heldout.txt). Default: on for the
    rectified-flow objective, where it was measured; off for DDPM, whose generated control
    cells lie further from the real ones, so the start is worse than its own flow
    (docs/results/compare_designs.txt). ``anchor=False`` leaves every condition to the flow.
    """
    import torch

    from .data.stream import BackedDataset
    from .device import resolve_device
    from .model import PerturbModel

    dist = dist or SINGLE
    if out_dir is not None and dist.main:
        check_destination(out_dir, overwrite=overwrite)
    prior_mode = overrides.pop("target_prior", "auto")
    if prior_mode not in ("auto", "gene_sets", "none"):
        raise ValueError(f"target_prior must be auto, gene_sets or none, got {prior_mode!r}")
    overrides.pop("prior_dim", None)                  # set by the priors, never by hand
    anchor = overrides.pop("anchor", None)            # engine.anchor.KANG_RULE for new types
    mc = ModelConfig.from_overrides(backbone, **overrides)
    if anchor is None:        # the default where it was measured: rectified flow (docstring)
        anchor = mc.arch.objective == "rectified_flow"
    if anchor:                # recorded through the typed config: config.json sampling.anchor
        mc = dataclasses.replace(mc, sampling=dataclasses.replace(
            mc.sampling, anchor=KANG_RULE.to_dict()))
    hp = mc.hyperparameters()
    t_start = time.perf_counter()
    dev = resolve_device(device)
    if dev == "cuda" and dist.active:
        dev = f"cuda:{dist.local_rank}"
    torch.manual_seed(seed)
    np.random.seed(seed)

    adata = apply_excludes(adata, exclude)
    adata = schema.filter(adata)
    streaming = isinstance(adata, BackedDataset)
    if streaming:
        source, codes, uniq, genes, counts_source, all_genes, density = _prepare_stream(
            adata, schema, mc, seed, dev, progress, cancel)
    else:
        source, codes, uniq, genes, counts_source, all_genes, density = _prepare_memory(
            adata, schema, mc)
    n_cells = source.shape[0]
    if n_cells < 20:
        raise DataError(f"only {n_cells} cells with counts remain; at least 20 are needed")
    budget = training_budget(mc.train, n_cells)

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
                  "gene_selection": ("all genes" if all_genes else
                                     f"{len(genes)} highly variable genes (scanpy seurat flavour)"
                                     " + perturbed genes"),
                  "encoder_input": "log1p(counts / library * 1e4)",
                  "decoder": "negative binomial, mean = softmax(decoder(z)) * library, "
                             + ("per-gene dispersion" if mc.arch.dispersion == "gene" else
                                "dispersion per gene and cell (per-gene value + offset from z)")},
              "sampling": mc.sampling.to_dict(),
              "density": density}
    if priors_entry is not None:
        config["target_priors"] = priors_entry
    k_members = int(mc.train.members)
    seeds = member_seeds(seed, k_members)
    if k_members > 1:
        config["ensemble"] = {"members": k_members, "seeds": seeds,
                              "bootstrap": bool(mc.train.bootstrap), "shared": "autoencoder",
                              "calibration": {}}

    if checkpoint_dir is None and out_dir is not None and resume:
        from .resume import partial_folder

        checkpoint_dir = partial_folder(out_dir)
    ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every, main=dist.main) \
        if checkpoint_dir is not None else None
    fingerprint = {"n_cells": int(n_cells), "n_genes": len(genes), "seed": int(seed),
                   "ae_steps": budget.ae_steps, "flow_steps": budget.flow_steps,
                   "members": k_members, "world_size": dist.world, "streaming": streaming}
    loaded = ckpt.load() if (resume and ckpt is not None) else None
    if resume and loaded is None and dist.main:
        print(f"no checkpoint in {checkpoint_dir}: starting from the beginning", flush=True)
    if loaded is not None and loaded[0].get("fingerprint") != fingerprint:
        raise ModelError(f"{checkpoint_dir}: the checkpoint belongs to another run "
                         f"({loaded[0].get('fingerprint')}; this run: {fingerprint}); delete "
                         "it or train without --resume")
    amp = dev.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    run = RunContext(dist, ckpt, loaded, amp, fingerprint)

    ae, net = PerturbModel.build_modules({**config, "latent_stats": {}})
    install_prior_table(net, prior_table)
    ae, net = ae.to(dev), net.to(dev)
    dist.broadcast_module(ae)
    dist.broadcast_module(net)

    gen = torch.Generator().manual_seed(seed)
    try:
        epochs, ae_history = fit_autoencoder(ae, source, mc.train, gen, dev, progress, cancel,
                                             budget=budget, run=run)
        states = _encode(ae, source, mc.train, gen, dev, run)
    finally:
        if streaming:
            source.close()
    config["latent_stats"] = {"mean": states.mean.cpu().tolist(),
                              "std": states.std.cpu().tolist()}
    # every training group's mean latent state: the baseline a new cell type starts from
    # (engine.anchor); under torchrun, rank 0's shard
    config["latent_means"] = latent_group_means(
        states.mus, states.libs, states.mean, states.std,
        np.asarray(codes)[states.lo:states.lo + len(states)],
        [space.complete(c) for c in uniq]).to_dict()
    run.carry = {"ae." + k: v for k, v in module_tensors(ae, "w").items()}
    run.carry["latent.mean"] = states.mean.detach().cpu()
    run.carry["latent.std"] = states.std.detach().cpu()
    run.carry_meta = {"ae_epochs": int(epochs), "ae_history": ae_history}
    lo, hi = states.lo, states.lo + len(states)
    local = None if not dist.active else conds_arr.take(np.arange(lo, hi))
    # a backbone that needs the fitted autoencoder (pathway tokens: engine.nn.pathways) is
    # completed, and rebuilt when it changed the config, here. Under torchrun each rank fits
    # on its own shard; rank 0's fit is broadcast (the chosen sets depend on the genes only).
    prep = BACKBONE_SPECS[mc.arch.backbone].prepare_after_autoencoder(ae, states, genes, config)
    if prep is not None:
        net = PerturbModel.build_net(config)
        install_prior_table(net, prior_table)
        net = prep.apply(net.to(dev))
        dist.broadcast_module(net)
    emas, flow_history = [], {}
    first = 0
    if run.resume_phase() == "flow":
        meta, tensors = run.resume
        first = int(meta["member"])
        for j in range(first):
            m_net = PerturbModel.build_net(config)
            load_module(m_net, f"done{j}", tensors)
            emas.append(m_net.eval())
            run.carry.update(module_tensors(m_net, f"done{j}"))
        flow_history = dict(meta.get("flow_history", {}))
    for m in range(first, k_members):
        if m == 0:                   # member 0 continues the run (K = 1: exactly as before)
            m_net, m_gen, m_states = net, gen, states
        else:
            torch.manual_seed(seeds[m])
            m_net = PerturbModel.build_net(config)
            install_prior_table(m_net, prior_table)
            m_net = m_net.to(dev)
            if prep is not None:
                prep.apply(m_net)
            dist.broadcast_module(m_net)
            m_gen = torch.Generator().manual_seed(seeds[m])
            m_states = dataclasses.replace(states, gen=m_gen)
        pool = bootstrap_rows(codes, seeds[m]) if k_members > 1 and mc.train.bootstrap \
            else None
        if dist.active:            # this rank's shard: cells lo .. hi - 1, local positions
            pool = (np.arange(lo, hi) if pool is None else pool[(pool >= lo) & (pool < hi)]) - lo
        span = 0.5 / k_members
        run.carry_meta["member"] = m
        run.carry_meta["flow_history"] = flow_history
        ema, hist = fit_flow(m_net, m_states, conds_arr if local is None else local, mc, m_gen,
                             dev, progress, cancel,
                             pool=pool, start=0.5 + m * span, span=span,
                             phase="flow" if k_members == 1 else
                             f"flow (member {m + 1} of {k_members})",
                             steps=budget.flow_steps, run=run)
        emas.append(ema.cpu())
        flow_history["flow" if m == 0 else f"flow_member{m}"] = hist
        run.carry.update(module_tensors(ema, f"done{m}"))
    if run.resume is not None:
        ae_history = run.resume[0].get("ae_history", ae_history)
        epochs = run.resume[0].get("ae_epochs", epochs)
    history = {"autoencoder": ae_history, **flow_history}
    check_cancel(cancel)
    reference = source.reference(codes, [space.complete(c) for c in uniq], seed) \
        if dist.main else None
    if isinstance(states, DiskLatentStates):
        states.close()

    seconds = time.perf_counter() - t_start
    config["training"] = {
        "data_file": data_file or "", "n_cells": int(n_cells), "n_genes": len(genes),
        "n_conditions": len(uniq), "exclude": [dict(r) for r in exclude], "seed": int(seed),
        "device": dev, "seconds": round(seconds, 1), "ae_epochs": int(epochs),
        "flow_steps": int(budget.flow_steps), "members": k_members, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "hardware": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "hyperparameters": {k: v for k, v in hp.items()}}
    if streaming or dist.active or budget.ae_steps != budget.ae_epochs * budget.per_epoch \
            or run.resume is not None or budget.flow_steps != mc.train.flow_steps:
        config["training"].update({
            "ae_steps": int(budget.ae_steps), "budget": budget.rule, "streaming": streaming,
            "world_size": dist.world, "mixed_precision": "bf16" if amp else "fp32",
            **({"resumed_from": {"phase": run.resume[0]["phase"],
                                 "step": int(run.resume[0]["step"])}}
               if run.resume is not None else {})})
    card = {"name": config["name"], "training": config["training"],
            "conditions": space.to_dict(), "genes": genes, "metrics": [],
            "loss_history": history}
    model = PerturbModel(config, ae.cpu(), emas, card=card, device=dev, reference=reference)
    if out_dir is not None and dist.main:
        model.save(out_dir, card=card, overwrite=overwrite)
    if out_dir is not None and ckpt is not None:
        ckpt.remove()
    return model


def _encode(ae, source, tc: TrainConfig, gen, dev: str, run: RunContext):
    """The latent states of the training cells (of this rank's shard in a data-parallel run):
    in memory as before, or on disk (:class:`DiskLatentStates`) when streaming. On resume in
    the flow phase the standardisation comes from the checkpoint."""
    dist = run.dist
    if not source.streaming and not dist.active:
        states = LatentStates.encode(ae, source.counts, tc, gen, dev)
    else:
        n = source.shape[0]
        lo, hi = n * dist.rank // dist.world, n * (dist.rank + 1) // dist.world
        cls = DiskLatentStates if source.streaming else LatentStates
        states = cls.encode_blocks(ae, source.blocks(lo, hi), hi - lo, tc, gen, dev, dist)
        states.lo = lo
    if run.resume_phase() == "flow":
        tensors = run.resume[1]
        states.mean = tensors["latent.mean"].to(dev)
        states.std = tensors["latent.std"].to(dev)
    return states


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


def _optimise(loss, module, opt, sched, *, clip: float, dist: Dist) -> None:
    """One optimiser step of either phase: gradients (averaged over the ranks of a
    data-parallel run), norm clipped to ``clip``, then the learning-rate schedule."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.all_reduce_grads(module.parameters())
    torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    opt.step()
    sched.step()


# -- phase 1: autoencoder ---------------------------------------------------------------------
def fit_autoencoder(ae, counts, tc: TrainConfig, gen, dev: str, progress: ProgressFn | None,
                    cancel: CancelToken | None, *, budget: Budget | None = None,
                    run: RunContext | None = None) -> tuple[int, list]:
    """Fit the VAE on the raw counts in place; return the number of epochs and the loss history
    [(step, loss per gene)]. Progress spans the first half.

    ``counts``: a CSR matrix (cells x genes) or a source (:class:`MemoryCounts`,
    :class:`StreamCounts`). ``budget``: the steps (default :func:`training_budget`). ``run``:
    data-parallel group, checkpoints and resume (:class:`RunContext`)."""
    import torch

    source = counts if hasattr(counts, "ae_batches") else MemoryCounts(counts)
    run = run or RunContext()
    n_cells, n_genes = source.shape
    b = budget or training_budget(tc, n_cells)
    bs = min(tc.batch_size, n_cells)
    if run.resume_phase() == "flow":           # the autoencoder was finished before the stop
        meta, tensors = run.resume
        load_module(ae, "ae.w", tensors)
        ae.eval()
        return int(meta.get("ae_epochs", b.ae_epochs)), list(meta.get("ae_history", []))
    ae_steps = b.ae_steps
    report = Reporter(progress, ae_steps, "autoencoder", start=0.0, span=0.5)
    opt = torch.optim.AdamW(ae.parameters(), lr=tc.ae_lr, weight_decay=1e-4)
    sched = _schedule(opt, tc.ae_lr, ae_steps, warmup=0.1)
    step, history, epoch = 0, [], None
    if run.resume_phase() == "autoencoder":
        meta, tensors = run.resume
        load_module(ae, "ae.w", tensors)
        step = int(meta["step"])
        _advance(sched, step)
        load_optimizer_state(opt, "opt", tensors, meta["optimizer"])
        if "gen.epoch" in tensors:
            gen.set_state(tensors["gen.epoch"])
            epoch = int(meta["epoch"])
        torch.set_rng_state(tensors["rng.torch"])
        history = [tuple(h) for h in meta.get("history", [])]
    ae.train()
    batches = source.ae_batches(bs, b.per_epoch, gen, step, run.dist, epoch)

    def save():
        t, m = optimizer_state(opt, "opt")
        extra, ep = {}, {}
        if source.epoch_state is not None:
            extra["gen.epoch"] = source.epoch_state[1]
            ep = {"epoch": int(source.epoch_state[0])}
        run.save({"phase": "autoencoder", "step": step, "optimizer": m, "history": history,
                  **ep}, {**module_tensors(ae, "ae.w"), **t, **extra})

    try:
        while step < ae_steps:
            check_cancel(cancel)
            if run.due():
                save()
            x = torch.as_tensor(next(batches), device=dev)
            kl_w = tc.kl_weight * min(1.0, step / max(0.3 * ae_steps, 1))
            with _autocast(dev, run.amp):
                loss, _parts = ae.loss(x, kl_w)
            _optimise(loss, ae, opt, sched, clip=10.0, dist=run.dist)
            step += 1
            if step % 10 == 0 or step == ae_steps:
                lv = float(loss.detach()) / n_genes
                history.append((step, lv))
                report(step, loss=lv)
    except (Cancelled, KeyboardInterrupt):
        save()
        raise
    finally:
        if hasattr(batches, "close"):
            batches.close()
    ae.eval()
    return int(b.ae_epochs), history


# -- latent states ----------------------------------------------------------------------------
@dataclass
class LatentStates:
    """Every cell's posterior (mean, sd) and log library size, and the standardisation.

    With ``latent_sampling``, the flow learns the aggregate posterior: every time a cell is
    drawn, its latent is a fresh sample of q(z | x), the distribution the decoder was trained to
    decode. Decoding posterior means instead loses, by Jensen's inequality, the expression of
    genes that are nearly off (K562 cells in the CRISPR data: 11 detected genes per cell instead
    of the real 15.5; build_scripts/detected_genes.py).

    ``lo``: the first cell these states cover (a rank's shard in a data-parallel run)."""

    mus: object
    sds: object
    libs: object
    mean: object
    std: object
    gen: object
    lo: int = 0

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

    @classmethod
    def _store(cls, n: int, d: int):
        import torch

        return torch.zeros(n, d), torch.zeros(n, d), torch.zeros(n, 1), {}

    def _put(self, s: int, mu, sd, lib) -> None:
        self.mus[s:s + len(mu)] = mu.cpu()
        self.sds[s:s + len(mu)] = sd.cpu()
        self.libs[s:s + len(mu)] = lib.cpu()

    @classmethod
    def encode_blocks(cls, ae, blocks, n: int, tc: TrainConfig, gen, dev: str,
                      dist: Dist = SINGLE):
        """Encode ``n`` cells given as dense blocks; the standardisation (mean and sd of a
        posterior sample and the log library) is summed over the ranks of a data-parallel
        run."""
        import torch

        d = int(ae.mu.out_features)
        mus, sds, libs, extra = cls._store(n, d)
        states = cls(mus, sds, libs, None, None, gen, **extra)
        tot = torch.zeros(3, d + 1, dtype=torch.float64)
        s = 0
        with torch.no_grad():
            for block in blocks:
                if isinstance(block, np.ndarray):
                    x = torch.as_tensor(block, device=dev)
                    mu, logvar = ae.encode(x)
                    lib = torch.log(x.sum(1, keepdim=True).clamp_min(1))
                else:
                    mu, logvar, lib = encode_sparse(ae, block, dev)
                sd = torch.exp(0.5 * logvar) if tc.latent_sampling else torch.zeros_like(mu)
                states._put(s, mu, sd, lib)
                spread = torch.cat([mu + sd * torch.randn(mu.shape, generator=gen).to(dev), lib],
                                   1).double().cpu()
                tot[0] += len(mu)
                tot[1] += spread.sum(0)
                tot[2] += (spread ** 2).sum(0)
                s += len(mu)
        dist.all_reduce_sum(tot)
        cnt = tot[0]
        mean = tot[1] / cnt
        var = (tot[2] - cnt * mean ** 2) / (cnt - 1).clamp_min(1)
        states.mean = mean.float().to(dev)
        states.std = var.clamp_min(0).sqrt().float().clamp_min(1e-3).to(dev)
        for a in (states.mus, states.sds, states.libs):
            if hasattr(a, "flush"):                 # np.memmap (DiskLatentStates)
                a.flush()
        return states

    def __len__(self) -> int:
        return int(self.mus.shape[0])

    def batch(self, idx):
        """Standardised latent states of cells ``idx``, a fresh posterior sample each call."""
        import torch

        i = idx.to(self.mus.device)
        z = self.mus[i] + self.sds[i] * torch.randn(self.mus[i].shape,
                                                    generator=self.gen).to(self.mus.device)
        return ((torch.cat([z, self.libs[i]], 1) - self.mean) / self.std).float()


def encode_sparse(ae, m, dev: str):
    """``ae.encode`` of a CSR block without making it dense: the first layer of the encoder as
    a sparse x dense product over the stored values (log1p(count / library * 1e4) is zero where
    the count is). Returns (mu, logvar, log library)."""
    import torch

    m = m.tocsr()
    lib = np.asarray(m.sum(axis=1), np.float64).ravel()
    scale = 1e4 / np.maximum(lib, 1.0)
    vals = np.log1p(m.data * np.repeat(scale, np.diff(m.indptr))).astype(np.float32)
    first = ae.encoder[0]
    if not isinstance(first, torch.nn.Linear):            # another encoder: densify
        x = torch.as_tensor(m.toarray(), device=dev)
        mu, logvar = ae.encode(x)
    else:
        import warnings

        with warnings.catch_warnings():        # "sparse CSR support is in beta" and kin
            warnings.simplefilter("ignore", UserWarning)
            xs = torch.sparse_csr_tensor(torch.as_tensor(m.indptr, dtype=torch.int64),
                                         torch.as_tensor(m.indices, dtype=torch.int64),
                                         torch.as_tensor(vals), size=m.shape).to(dev)
        h = ae.encoder[1:](torch.sparse.mm(xs, first.weight.t()) + first.bias)
        mu, logvar = ae.mu(h), ae.logvar(h).clamp(-12, 8)
    log_lib = torch.log(torch.as_tensor(lib, dtype=torch.float32, device=dev)
                        .clamp_min(1))[:, None]
    return mu, logvar, log_lib


@dataclass
class DiskLatentStates(LatentStates):
    """:class:`LatentStates` in ``np.memmap`` files of a temporary folder (float32; 4 bytes x
    (2 x latent_dim + 1) a cell): the flow phase reads the minibatch rows from them."""

    folder: object = None

    @classmethod
    def _store(cls, n: int, d: int):
        import tempfile

        folder = tempfile.mkdtemp(prefix="perturb-latents-")
        mk = lambda name, k: np.lib.format.open_memmap(  # noqa: E731
            os.path.join(folder, name), mode="w+", dtype=np.float32, shape=(n, k))
        return mk("mus.npy", d), mk("sds.npy", d), mk("libs.npy", 1), {"folder": folder}

    def _put(self, s: int, mu, sd, lib) -> None:
        self.mus[s:s + len(mu)] = mu.float().cpu().numpy()
        self.sds[s:s + len(mu)] = sd.float().cpu().numpy()
        self.libs[s:s + len(mu)] = lib.float().cpu().numpy()
        self._puts = getattr(self, "_puts", 0) + 1
        if self._puts % 8 == 0:          # written pages to disk and out of resident memory
            for a in (self.mus, self.sds, self.libs):
                a.flush()
            _drop_pages(self.mus, self.sds, self.libs)

    def _rows(self, arr, rows: np.ndarray) -> np.ndarray:
        """Rows of one of the arrays read with ``os.pread`` (sorted, unique ``rows``), not
        through the mapping: a page fault maps its neighbours too (fault-around, 64 KB), so
        random rows read through the mapping would keep most of the file resident."""
        fds = self.__dict__.setdefault("_fds", {})
        key = id(arr)
        if key not in fds:
            fds[key] = os.open(arr.filename, os.O_RDONLY)
        width = arr.shape[1] * 4
        buf = b"".join(os.pread(fds[key], width, arr.offset + int(r) * width) for r in rows)
        return np.frombuffer(buf, np.float32).reshape(len(rows), arr.shape[1])

    def batch(self, idx):
        import torch

        i = idx.cpu().numpy()
        uniq, inv = np.unique(i, return_inverse=True)
        dev = self.mean.device
        mu, sd, lib = (torch.from_numpy(self._rows(a, uniq)[inv]).to(dev)
                       for a in (self.mus, self.sds, self.libs))
        z = mu + sd * torch.randn(mu.shape, generator=self.gen).to(dev)
        return ((torch.cat([z, lib], 1) - self.mean) / self.std).float()

    def close(self) -> None:
        import shutil

        for fd in self.__dict__.pop("_fds", {}).values():
            os.close(fd)
        self.mus = self.sds = self.libs = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def _drop_pages(*arrays) -> None:
    import mmap

    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            m.madvise(mmap.MADV_DONTNEED)


# -- phase 2: latent generative model ---------------------------------------------------------
def fit_flow(net, states: LatentStates, conds_arr, mc: ModelConfig, gen, dev: str,
             progress: ProgressFn | None, cancel: CancelToken | None, *,
             pool: np.ndarray | None = None, start: float = 0.5, span: float = 0.5,
             phase: str = "flow", steps: int | None = None, run: RunContext | None = None):
    """Fit the conditional velocity / noise network with classifier-free-guidance dropout (all
    levels with ``p_uncond``, the finer levels with ``p_coarse``); return the exponential moving
    average of its weights and the loss history. Progress spans ``start`` .. ``start + span``.

    ``pool``: the rows to draw minibatches from (an ensemble member's bootstrap,
    :func:`bootstrap_rows`); all cells when None. ``steps``: the budget (default
    ``flow_steps``). ``run``: data-parallel group (each rank draws ``flow_batch / K`` rows of
    its own shard), checkpoints and resume (:class:`RunContext`)."""
    import torch

    from .diffusion.schedules import OBJECTIVES

    tc = mc.train
    run = run or RunContext()
    objective = OBJECTIVES[mc.arch.objective]()
    n_cells = len(states) if pool is None else len(pool)
    pool_t = None if pool is None else torch.as_tensor(pool, dtype=torch.int64)
    fsteps = int(steps or tc.flow_steps)
    fbs = min(math.ceil(tc.flow_batch / run.dist.world), n_cells)
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
    first = 1
    member = run.carry_meta.get("member", 0)
    if run.resume_phase() == "flow" and int(run.resume[0]["member"]) == member:
        meta, tensors = run.resume
        load_module(net, "net", tensors)
        load_module(ema, "ema", tensors)
        first = int(meta["step"]) + 1
        _advance(sched, first - 1)
        load_optimizer_state(opt, "opt", tensors, meta["optimizer"])
        gen.set_state(tensors["gen.run"])
        torch.set_rng_state(tensors["rng.torch"])
        history = [tuple(h) for h in meta.get("history", [])]
    if mc.arch.target_prior != "none":
        net.cond.perturbation.learned_dropout = float(tc.target_dropout)
    net.train()
    step = first - 1

    def save():
        t, m = optimizer_state(opt, "opt")
        run.save({"phase": "flow", "step": step, "optimizer": m, "history": history,
                  "member": member},
                 {**module_tensors(net, "net"), **module_tensors(ema, "ema"), **t,
                  "gen.run": gen.get_state()})

    try:
        for step in range(first, fsteps + 1):
            if run.due():
                step -= 1
                save()
                step += 1
            try:
                check_cancel(cancel)
            except Cancelled:
                step -= 1
                raise
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
            with _autocast(dev, run.amp):
                c = net.embed(levels.to(dev), tg_t[idx].to(dev), ty_t[idx].to(dev),
                              do_t[idx].to(dev), null.to(dev))
                pred = net(xt, t, c)
            loss = torch.nn.functional.mse_loss(pred.float(), target)
            _optimise(loss, net, opt, sched, clip=1.0, dist=run.dist)
            with torch.no_grad():
                decay = min(tc.ema, (1 + step) / (10 + step))
                for pe, pn in zip(ema.parameters(), net.parameters(), strict=False):
                    pe.lerp_(pn, 1 - decay)
            if step % 20 == 0 or step == fsteps:
                history.append((step, float(loss.detach())))
                report(step, loss=float(loss.detach()))
    except Cancelled:
        save()
        raise
    except KeyboardInterrupt:
        step -= 1
        save()
        raise
    return ema, history
