"""The user-facing model: load a model folder, generate cells, perturb given cells.

Two ways to generate:

1. *de novo* (:meth:`PerturbModel.generate`): noise -> latent state -> NB counts, for a condition.
2. *perturb my cells* (:meth:`PerturbModel.perturb`): each given control cell is encoded, carried
   back to noise along the control condition's deterministic path (ODE / DDIM inversion), then
   forward along the perturbed condition's path and decoded (Su et al. 2023, "dual diffusion
   implicit bridges"). The noise code is the cell's identity; the condition changes.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoint import (
    CONFIG,
    REFERENCE,
    WEIGHTS,
    load_weights,
    read_card,
    read_config,
    sha256,
)
from .conditions.spec import Condition, ConditionSpace
from .conditions.vocab import CELL_TYPE_LEVEL, CondArrays, Vocab
from .errors import ConditionError, DataError, ModelError, PerturbStudioError, ResourceError
from .keys import LAYERS, OBS, UNS
from .memory import (
    CsrBuilder,
    MemoryEstimate,
    available_memory,
    check_generation_memory,
    out_of_memory_as_resource_error,
)
from .progress import CancelToken, ProgressFn, Reporter, check_cancel

MAX_CELLS = 5_000_000
MAX_STEPS = 1000
MAX_GUIDANCE = 20.0
MAX_SEED = 2**64 - 1


@dataclass
class GeneMapping:
    """How a dataset's genes line up with a model's genes (matched by symbol)."""

    n_model: int
    found: list[str]
    missing: list[str]
    n_extra: int
    index: np.ndarray = field(repr=False)   # model gene i -> dataset column, or -1

    @property
    def fraction_found(self) -> float:
        return len(self.found) / max(self.n_model, 1)

    def describe(self) -> str:
        s = f"{len(self.found)} of {self.n_model} model genes found in the data"
        if self.missing:
            s += f"; {len(self.missing)} missing (e.g. {', '.join(self.missing[:5])})"
        return s + f"; {self.n_extra} data genes not used by the model"


class PerturbModel:
    """A trained latent generative model of single-cell expression under conditions."""

    def __init__(self, config: dict, autoencoder, net, *, path: Path | None = None,
                 card: dict | None = None, device: str = "cpu", reference=None) -> None:
        """``net``: the flow network, or a list of them (one per ensemble member, sharing the
        autoencoder; see :mod:`engine.effects`)."""
        import torch

        from .diffusion.schedules import OBJECTIVES

        self.config, self.path, self.card = config, path, card or {}
        self.genes: list[str] = list(config["genes"])
        self.vocab = Vocab.from_dict(config["vocab"])
        self.space = ConditionSpace.from_dict(config["space"])
        self.device = device
        self.autoencoder = autoencoder.to(device).eval()
        nets = list(net) if isinstance(net, list | tuple) else [net]
        self.nets = [m.to(device).eval() for m in nets]
        self.net = self.nets[0]
        arch = config["architecture"]
        self.objective = OBJECTIVES[arch.get("objective", "rectified_flow")]()
        stats = config["latent_stats"]
        self._mean = torch.tensor(stats["mean"], dtype=torch.float32, device=device)
        self._std = torch.tensor(stats["std"], dtype=torch.float32, device=device)
        self.latent_dim = int(arch["latent_dim"])
        self._weights_sha = config.get("_weights_sha256", "")
        self._reference = reference          # engine.reference.Reference, loaded lazily
        self._reference_loaded = reference is not None or path is None
        # target priors (architecture.target_prior = "gene_sets"): genes never perturbed in
        # training that the gene-set priors know get indices above the trained targets
        self.target_priors: dict | None = None
        self._new_targets: dict[str, int] = {}
        if arch.get("target_prior", "none") != "none":
            self.target_priors = dict(config["target_priors"])
            self._symbol_target = {sym: t for t, sym in zip(
                self.vocab.targets, self.target_priors["symbols"], strict=True) if sym}
            self.space.gene_lookup = self._lookup_gene

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def build_modules(config: dict):
        """The autoencoder and flow network of a config (v1 or v2), built from its
        :class:`engine.config.ArchConfig`."""
        from .config import ArchConfig, upgrade_v1
        from .models.autoencoder import NBAutoencoder

        config = upgrade_v1(config) if config.get("format_version") == 1 else config
        arch = ArchConfig(**config["architecture"])
        ae = NBAutoencoder(len(config["genes"]), arch.latent_dim, arch.ae_hidden,
                           dispersion=arch.dispersion)
        return ae, PerturbModel.build_net(config)

    @staticmethod
    def build_net(config: dict):
        """One (freshly initialised) flow network of a config: an ensemble member."""
        from .config import ArchConfig, upgrade_v1
        from .models.flow import LatentFlowNet

        config = upgrade_v1(config) if config.get("format_version") == 1 else config
        arch, vocab = ArchConfig(**config["architecture"]), Vocab.from_dict(config["vocab"])
        return LatentFlowNet(arch.latent_dim + 1,
                             [len(vocab.level_values[lv]) for lv in vocab.levels],
                             len(vocab.targets), len(vocab.types), backbone=arch.backbone,
                             cond_dim=arch.cond_dim, prior_dim=arch.prior_dim,
                             **arch.backbone_kw)

    @staticmethod
    def member_prefix(k: int, members: int) -> str:
        """Weights of member ``k``: ``net.`` for a single-member model (formats 1-2 and K = 1),
        ``members.<k>.net.`` in an ensemble."""
        return "net." if members == 1 else f"members.{k}.net."

    @classmethod
    def load(cls, name_or_dir: str | os.PathLike, *, device: str = "auto") -> PerturbModel:
        """Load a model by name (shipped or user model) or from a folder path."""
        import torch

        from .config import ensemble_members
        from .device import resolve_device
        from .registry import resolve_model

        folder = resolve_model(name_or_dir)
        config = read_config(folder)
        k = ensemble_members(config)
        try:
            ae, net = cls.build_modules(config)
            nets = [net] + [cls.build_net(config) for _ in range(k - 1)]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{folder / CONFIG}: architecture entry is invalid ({e!r})") from None
        expected = {f"autoencoder.{n}": v.shape for n, v in ae.state_dict().items()}
        for i, m in enumerate(nets):
            pre = cls.member_prefix(i, k)
            expected.update({f"{pre}{n}": v.shape for n, v in m.state_dict().items()})
        state = load_weights(folder, expected)
        ae.load_state_dict({n[12:]: v for n, v in state.items() if n.startswith("autoencoder.")})
        for i, m in enumerate(nets):
            pre = cls.member_prefix(i, k)
            m.load_state_dict({n[len(pre):]: v for n, v in state.items() if n.startswith(pre)})
        for t in state.values():
            if not torch.isfinite(t).all():
                raise ModelError(f"{folder / WEIGHTS} contains NaN or infinite weights")
        config = dict(config, _weights_sha256=sha256(folder / WEIGHTS))
        return cls(config, ae, nets, path=folder, card=read_card(folder),
                   device=resolve_device(device))

    def state_dict(self) -> dict:
        out = {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        for i, m in enumerate(self.nets):
            pre = self.member_prefix(i, len(self.nets))
            out.update({f"{pre}{k}": v for k, v in m.state_dict().items()})
        return out

    def save(self, folder: str | os.PathLike, *, card: dict | None = None,
             card_md: str | None = None, overwrite: bool = False) -> Path:
        """Write the model folder atomically; an existing model there is replaced only with
        ``overwrite``, and a folder holding anything else is refused (ModelError)."""
        from .checkpoint import save_folder

        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        reference = self.reference           # read before the folder it may come from moves
        self.path = save_folder(folder, config, self.state_dict(), card or self.card, card_md,
                                overwrite=overwrite,
                                extra={} if reference is None else
                                {REFERENCE: reference.to_bytes()})
        self.card = card or self.card
        self._weights_sha = sha256(self.path / WEIGHTS)
        return self.path

    # -- ensemble, evidence and reference cells ------------------------------------------------
    @property
    def members(self) -> int:
        """Ensemble members (1 for models of formats 1-2 and single-member models)."""
        return len(self.nets)

    def calibration(self, kind: str) -> float:
        """The factor applied to the member spread for evidence class ``kind`` (measured on
        held-out cells, ``config["ensemble"]["calibration"]``; 1 where none was measured)."""
        cal = (self.config.get("ensemble") or {}).get("calibration") or {}
        return float(cal.get(kind, cal.get("default", 1.0)))

    def evidence(self, condition: Condition):
        """How much the training data says about ``condition`` and how the model did on that
        kind of condition (:class:`engine.effects.Evidence`); no generation."""
        from .effects import evidence_for

        return evidence_for(self, condition)

    @property
    def reference(self):
        """The :class:`engine.reference.Reference` stored with the model (real training cells
        and training group means), or None. Read from the folder on first use."""
        if not self._reference_loaded:
            from .reference import read_reference

            self._reference_loaded = True
            self._reference = None if self.path is None else read_reference(self.path,
                                                                            self.genes)
        return self._reference

    @property
    def n_reference_cells(self) -> int:
        ref = self.reference
        return 0 if ref is None else ref.n_cells

    def reference_cells(self):
        """Up to 2,000 real training cells stored with the model (an AnnData with the obs
        columns of generated cells, counts in ``layers["counts"]``), or None."""
        ref = self.reference
        return None if ref is None or ref.n_cells == 0 else ref.to_anndata(self)

    def group_stats(self):
        """Mean expression of every training condition group (:class:`engine.effects.GroupStats`)
        or None for a model saved without a reference."""
        ref = self.reference
        return None if ref is None else ref.group_stats()

    # -- properties ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.get("name") or (self.path.name if self.path else "unnamed")

    @property
    def default_steps(self) -> int:
        from .config import SamplingConfig

        return int(self.config.get("sampling", {}).get("steps", SamplingConfig.steps))

    @property
    def default_guidance(self) -> float:
        from .config import SamplingConfig

        return float(self.config.get("sampling", {}).get("guidance", SamplingConfig.guidance))

    @property
    def guidance_by_evidence(self) -> dict[str, float]:
        """Guidance per evidence class (``sampling.guidance_by_evidence``), chosen on held-out
        folds when the model was built; empty for models that use one guidance for all."""
        by = self.config.get("sampling", {}).get("guidance_by_evidence") or {}
        return {str(k): float(v) for k, v in by.items()}

    def guidance_for(self, condition: Condition) -> float:
        """The guidance a condition is drawn with when the caller gives none: the value for
        its evidence class (:func:`engine.effects.classify`) if the model has one, else the
        model's default."""
        by = self.guidance_by_evidence
        if not by:
            return self.default_guidance
        from .effects import classify

        cond = self.space.complete(self.check_condition(condition))
        return float(by.get(classify(self.space, cond), self.default_guidance))

    # -- baseline anchor for new cell types (engine.anchor) --------------------------------------
    @property
    def anchor_rule(self):
        """The :class:`engine.anchor.AnchorRule` of ``sampling.anchor`` (None: the flow alone
        for every condition)."""
        from .anchor import AnchorRule

        return AnchorRule.from_config(self.config.get("sampling", {}).get("anchor"))

    @property
    def latent_means(self):
        """The training groups' mean latent states (:class:`engine.anchor.LatentMeans`) read
        from ``config["latent_means"]`` (cheap: a few hundred numbers), or None."""
        from .anchor import LatentMeans

        return LatentMeans.from_config(self.config.get("latent_means"))

    def anchor_for(self, condition: Condition):
        """``(delta, groups, weights)`` when ``condition`` is drawn from the latent baseline (its class
        is one of the rule's and the training data measured its perturbations in another cell
        type / context), else None. ``delta``: a (d + 1,) float32 array in the flow's
        standardised space."""
        rule, means = self.anchor_rule, self.latent_means
        if rule is None or means is None:
            return None
        from .effects import classify

        cond = self.space.complete(self.check_condition(condition))
        kind = classify(self.space, cond)
        if kind not in rule.kinds:
            return None
        if kind == "new_combination":
            return means.additive(cond)
        return means.delta(cond, weights=rule.weights, tau=rule.tau, magnitude=rule.magnitude,
                           gain=rule.gain)

    def _anchor_shift(self, cond: Condition, delta, rule, states):
        """The shift added to the start cells ``states``: the latent baseline ``delta``, or
        with ``rule.match == "expression"`` the latent shift whose decoded expression moves
        like the expression-space baseline (``engine.effects.baseline_for``; the latent
        ``delta`` when the model carries no group means)."""
        import torch

        if rule.match == "expression":
            from .anchor import match_expression
            from .effects import baseline_for

            base = baseline_for(self, cond)
            if base is not None:
                delta = match_expression(self.autoencoder, states.detach(), delta, base.effect,
                                         self._mean, self._std)
        return torch.as_tensor(delta, device=self.device)

    def _refine(self, x, cond_pair, rule, guidance: float, steps: int, generator, cancel, net):
        """Anchor ``x`` (standardised states) noised to the fraction ``rule.refine`` of the
        objective's time range by its own forward process (rectified flow: ``(1 - s) x + s
        noise``; DDPM: ``sqrt(ab) x + sqrt(1 - ab) noise``), then integrated to the data under
        ``cond_pair`` (SDEdit)."""
        import torch

        s = float(rule.refine)
        if s <= 0:
            return x
        t = s * float(self.objective.t_max)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        xs = self.objective.corrupt(x, noise, torch.full((x.shape[0],), t, device=x.device))[0]
        grid = [t] + [u for u in self.objective.grid(steps) if u < t]
        return self._integrate(xs, *cond_pair, guidance, grid, None, cancel, net=net)

    # -- conditions ------------------------------------------------------------------------------
    def check_condition(self, condition: Condition) -> Condition:
        if not isinstance(condition, Condition):
            raise ConditionError(f"expected a Condition, got {type(condition).__name__}")
        self.space.validate(condition)
        return self.space.complete(condition)

    # -- genes never perturbed in training (target priors) -------------------------------------
    @property
    def accepts_new_genes(self) -> bool:
        """True for a model with gene-set target priors: it accepts a gene never perturbed in
        training when the priors know it (predicted from the prior path alone)."""
        return self.target_priors is not None

    def _priors(self):
        """The gene priors resource this model's prior rows came from (ConditionError when it
        cannot be read or is another build than the model was trained with)."""
        from .priors import load_gene_priors

        try:
            priors = load_gene_priors()
        except DataError as e:
            raise ConditionError(f"the gene-set priors needed for genes never perturbed in "
                                 f"training cannot be read ({e})") from None
        tp = self.target_priors or {}
        if priors.dims != tp.get("dims") or (tp.get("sha256") and
                                             priors.fingerprint != tp["sha256"]):
            raise ConditionError("the installed gene-set priors are another build than this "
                                 "model was trained with; genes never perturbed in training "
                                 "cannot be predicted (reinstall the app or retrain the model)")
        return priors

    def _lookup_gene(self, name: str) -> str:
        """The target ``name`` means: a trained target (also by an alias, an Ensembl id or
        another case) or the priors' symbol of a gene never perturbed. ConditionError with the
        reason when the priors do not know it."""
        if name in self._symbol_target:
            return self._symbol_target[name]
        priors = self._priors()
        sym = priors.resolve(name)
        if sym is None:
            raise ConditionError(
                f"{name} is not in the gene-set priors ({len(priors):,} human symbols from "
                "Hallmark, Reactome, GO, WikiPathways) and was never perturbed in this model's "
                f"training data; perturbable targets are: {', '.join(self.space.targets[:40])}"
                + (f", ... ({len(self.space.targets)} in all)"
                   if len(self.space.targets) > 40 else ""))
        return self._symbol_target.get(sym, sym)

    def new_gene_candidates(self) -> list[str]:
        """Genes of the gene-set priors this model can be asked for although they were never
        perturbed in training (sorted; empty without target priors or without the resource)."""
        if self.target_priors is None:
            return []
        try:
            priors = self._priors()
        except ConditionError:
            return []
        trained = set(self._symbol_target) | set(self.space.targets)
        return sorted(g for g in priors.genes if g not in trained)

    def target_notes(self, condition: Condition) -> list[str]:
        """Plain sentences on how the targets of ``condition`` were read: a name that mapped to
        another symbol, a gene never perturbed in training."""
        out = []
        for p in condition.perturbations:
            t = self.space.canonical_target(p.target)
            if t != p.target:
                out.append(f"{p.target} was read as {t} (gene symbol of the priors' alias table)")
            if t not in self.space.targets and self.accepts_new_genes:
                out.append(f"{t}: never perturbed in training: predicted from gene-set priors")
        return out

    def _encode(self, conds: Sequence[Condition]) -> CondArrays:
        """Index arrays of (checked, completed) conditions; a gene never perturbed in training
        gets an index above the trained targets and its prior row in every member."""
        import torch

        if self.target_priors is not None:
            new = sorted({p.target for c in conds for p in c.perturbations
                          if p.target not in self.vocab.targets and
                          p.target not in self._new_targets})
            if new:
                from .priors import target_prior_rows

                rows_new, _ = target_prior_rows(self._priors(), new)
                n = len(self.vocab.targets)
                for t in new:
                    self._new_targets[t] = n + 1 + len(self._new_targets)
                old = self.net.cond.perturbation.new_prior.cpu()
                rows = torch.cat([old, torch.as_tensor(rows_new)])
                for net in self.nets:
                    net.cond.perturbation.set_new_targets(rows)
        return self.vocab.encode(conds, self._new_targets)

    def _embed(self, arrays: CondArrays, net=None):
        import torch

        dev = self.device
        net = self.net if net is None else net
        with torch.no_grad():
            return net.embed(torch.as_tensor(arrays.levels, device=dev),
                                  torch.as_tensor(arrays.targets, device=dev),
                                  torch.as_tensor(arrays.types, device=dev),
                                  torch.as_tensor(arrays.doses, device=dev),
                                  torch.as_tensor(arrays.null, device=dev))

    def _cond_pair(self, condition: Condition, net=None):
        """Embedding of the condition and of the "unconditional" null (for guidance), (1, C),
        by ``net`` (an ensemble member; the first by default)."""
        arr = self._encode([condition])
        null = CondArrays(np.zeros_like(arr.levels), arr.targets, arr.types, arr.doses,
                          np.ones(1, bool))
        return self._embed(arr, net), self._embed(null, net)

    # -- the sampling loop -----------------------------------------------------------------------
    def _integrate(self, x, c, c_null, guidance: float, grid: Sequence[float], on_step=None,
                   cancel: CancelToken | None = None, net=None):
        """Drain the sampling generator (:func:`engine.diffusion.sampler.sample_progressive`)
        with ``net`` (an ensemble member; the first by default)."""
        from .diffusion.sampler import sample

        return sample(self.net if net is None else net, self.objective, x, c, c_null, guidance,
                      grid, on_step, cancel)

    def _decode_counts(self, state, generator):
        """Latent state (B, d+1) -> NB counts as (flat indices, values) and per-row nnz."""
        import torch

        from .models.autoencoder import sample_nb

        with torch.no_grad():
            s = state * self._std + self._mean
            z, log_lib = s[:, : self.latent_dim], s[:, self.latent_dim:]
            idx, values = sample_nb(*self.autoencoder.nb_params(z, log_lib), generator)
        return idx.cpu().numpy(), values.cpu().numpy(), state.shape[0]

    def _batches(self, n: int) -> list[int]:
        size = self._batch_size()
        return [min(size, n - i) for i in range(0, n, size)]

    def _member_batches(self, n: int) -> list[tuple[int, int]]:
        """``(member, batch size)`` for ``n`` cells: ``n / K`` cells from each member (the first
        ``n % K`` members one more), each member's share in batches."""
        k = self.members
        out = []
        for m in range(k):
            share = n // k + (1 if m < n % k else 0)
            out.extend((m, b) for b in self._batches(share) if b)
        return out

    @property
    def density(self) -> float:
        """Fraction of non-zero counts in the training data (sizes the memory estimate)."""
        try:
            d = float(self.config.get("density", 0.2))
        except (TypeError, ValueError):
            d = 0.2
        return min(max(d, 1e-3), 1.0) if np.isfinite(d) else 0.2

    def _check_memory(self, n: int, *, perturb: bool = False) -> MemoryEstimate:
        """Refuse, before any work, a run whose peak memory would not fit (see engine.memory)."""
        n = _cell_count(n)
        if n > MAX_CELLS:
            raise ResourceError(f"{n:,} cells is more than one run can generate "
                                f"(at most {MAX_CELLS:,}); split the experiment")
        what = f"{'perturbing' if perturb else 'generating'} {n:,} cells"
        return check_generation_memory(n, len(self.genes), self.density, what=what,
                                       available=_available_memory(),
                                       batch_size=self._batch_size(), latent_dim=self.latent_dim,
                                       perturb=perturb)

    def _batch_size(self) -> int:
        try:
            from .config import SamplingConfig

            size = int(self.config.get("sampling", {}).get("batch_size",
                                                           SamplingConfig.batch_size))
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise ModelError(f"{self.name}: sampling.batch_size in config.json must be a "
                             f"positive whole number, got {size}")
        return size

    def _sampling(self, steps, guidance) -> tuple[int, float]:
        """The steps and guidance to use (the model's defaults for None), checked."""
        steps = self.default_steps if steps is None else steps
        guidance = self.default_guidance if guidance is None else guidance
        _check_sampling(steps, guidance)
        return int(steps), float(guidance)

    def _generators(self, seed: int):
        import torch

        seed = _check_seed(seed)
        cpu = torch.Generator().manual_seed(seed)
        dev = torch.Generator(device=self.device).manual_seed(seed + 1 if seed < MAX_SEED else 0)
        return cpu, dev

    # -- mode 1: de novo ------------------------------------------------------------------------
    def generate(self, condition: Condition, n: int, *, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None, anchor: bool | None = None):
        """Sample ``n`` new cells of ``condition`` from noise. Returns an AnnData (see module doc).

        Same seed, model and device give identical cells."""
        return self.generate_many([condition], n, include_control=False, seed=seed, steps=steps,
                                  guidance=guidance, progress=progress, cancel=cancel,
                                  anchor=anchor)

    def generate_many(self, conditions: Sequence[Condition], n: int, *,
                      include_control: bool = True, seed: int = 0, steps: int | None = None,
                      guidance: float | None = None, progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None, anchor: bool | None = None):
        """Generate ``n`` cells for each condition as one experiment; with ``include_control``
        the matching control of every condition is generated too (once per distinct control).

        ``anchor``: None (the model's choice, ``sampling.anchor``) or False (the flow alone):
        a condition of an anchored evidence class starts from its cell type's control cells
        plus the perturbation's latent effect in the other cell types (:mod:`engine.anchor`)."""
        import torch

        conds = [self.check_condition(c) for c in conditions]
        if not conds:
            raise ConditionError("no condition given")
        if include_control:
            for c in list(conds):
                if c.control() not in conds:
                    conds.append(c.control())
        n = _cell_count(n)
        auto = guidance is None
        steps, guidance = self._sampling(steps, guidance)
        per_cond = [self.guidance_for(c) if auto else guidance for c in conds]
        _check_seed(seed)
        total = n * len(conds)
        est = self._check_memory(total)
        grid = self.objective.grid(steps)
        d = self.latent_dim + 1
        report = Reporter(progress, total, "generating cells")
        g_cpu, g_dev = self._generators(seed)
        labels, done = [], 0
        rule, anchors, shifts = self.anchor_rule, {}, {}
        use_anchor = anchor is not False and rule is not None
        with out_of_memory_as_resource_error(f"generating {total:,} cells", est):
            builder = self._builder(total)
            for cond, g in zip(conds, per_cond, strict=True):
                pairs = [self._cond_pair(cond, net) for net in self.nets]
                anc = self.anchor_for(cond) if use_anchor else None
                if anc is not None:         # start from the type's control cells (measured)
                    start = [self._cond_pair(cond.control(), net) for net in self.nets]
                    g_start = self.guidance_for(cond.control()) if auto else g
                    anchors[cond.label] = _anchor_groups(anc)
                for m, b in self._member_batches(n):
                    c, c_null = pairs[m]
                    x = torch.randn(b, d, generator=g_cpu).to(self.device)

                    def on_step(k, _b=b, _done=done):
                        report(_done + int(_b * k / (steps + 1)))

                    if anc is None:
                        x = self._integrate(x, c, c_null, g, grid, on_step, cancel,
                                            net=self.nets[m])
                    else:
                        x = self._integrate(x, *start[m], g_start, grid, on_step, cancel,
                                            net=self.nets[m])
                        key = (cond.label, m)
                        if key not in shifts:          # once per condition and member
                            shifts[key] = self._anchor_shift(cond, anc[0], rule, x)
                        x = x + shifts[key]
                        x = self._refine(x, pairs[m], rule, rule.guidance if auto else g, steps,
                                         g_cpu, cancel, self.nets[m])
                    check_cancel(cancel)
                    builder.add(*self._decode_counts(x, g_dev))
                    labels.append((cond, b, m))
                    done += b
                    report(done)
            check_cancel(cancel)
            same = len(set(per_cond)) == 1
            run_id = self._run_id("denovo", conds, n, seed, steps,
                                  per_cond[0] if same else per_cond)
            adata = self._assemble(builder, labels, run_id)
        prov = self._provenance("denovo", conds, seed, steps, per_cond[0])
        prov.update(self._guidance_record(conds, per_cond, auto))
        if anchors:
            prov["anchor"] = self._anchor_record(rule, anchors, auto)
        prov["run_id"] = run_id
        adata.uns[UNS.PROVENANCE] = prov
        return adata

    # -- mode 2: perturb given cells ----------------------------------------------------------------
    def perturb(self, cells, condition: Condition, *, seed: int = 0, steps: int | None = None,
                guidance: float | None = None, progress: ProgressFn | None = None,
                cancel: CancelToken | None = None, min_gene_fraction: float = 0.5,
                anchor: bool | None = None):
        """Produce the perturbed counterpart of each given cell (an AnnData with raw counts).

        The cells should be controls of ``condition``'s cell type. Each output cell keeps its
        input's identity (``obs['source_cell']``); model genes missing from the data are treated
        as zero and counted in ``uns['perturb_studio']['genes_missing']``. Cells without any
        count in the model's genes cannot be encoded and are refused (:class:`DataError`).

        ``anchor`` (None: the model's choice; False: the flow alone): for a condition of an
        anchored evidence class (:mod:`engine.anchor`) each encoded cell is moved by the
        perturbation's latent effect in the other cell types, then refined by the flow,
        instead of being inverted to noise and regenerated."""
        import torch

        from .data.io import get_counts

        cond = self.check_condition(condition)
        auto = guidance is None
        steps, guidance = self._sampling(steps, self.guidance_for(cond) if auto else guidance)
        _check_seed(seed)
        mapping = self.gene_mapping(cells)
        if mapping.fraction_found < min_gene_fraction:
            raise DataError(f"only {mapping.describe()}; at least {min_gene_fraction:.0%} are "
                            "needed to encode these cells (are gene symbols in var_names?)")
        counts, _ = get_counts(cells)
        n = counts.shape[0]
        if n < 1:
            raise DataError("the given cells are empty (0 cells); nothing to perturb")
        _check_not_empty(counts, mapping, cells.obs_names)
        est = self._check_memory(n, perturb=True)
        rule = self.anchor_rule
        anc = self.anchor_for(cond) if anchor is not False and rule is not None else None
        src = [self._cond_pair(cond.control(), net) for net in self.nets]
        tgt = [self._cond_pair(cond, net) for net in self.nets]
        k_members = self.members
        grid = self.objective.grid(steps)
        total = 2 * steps
        report = Reporter(progress, n, "perturbing cells")
        g_anchor, g_dev = self._generators(seed)
        labels, done, shifts = [], 0, {}
        with out_of_memory_as_resource_error(f"perturbing {n:,} cells", est):
            x0 = self._encode_counts(counts, mapping.index)              # (n, d+1) standardised
            del counts
            builder = self._builder(n)
            sizes = self._batches(n)
            for start, b in zip(np.cumsum([0] + sizes[:-1]), sizes, strict=True):
                x = torch.as_tensor(x0[start:start + b], device=self.device)

                def on_step(k, _b=b, _done=done):
                    report(_done + int(_b * k / (total + 1)))

                # cell i goes through member i % K (round robin: no member sees one block)
                member = (np.arange(start, start + b) % k_members)
                for m in range(k_members):
                    sel = torch.as_tensor(np.flatnonzero(member == m), device=self.device)
                    if not len(sel):
                        continue
                    net = self.nets[m]
                    if anc is not None:
                        if m not in shifts:             # from the first batch's cells
                            shifts[m] = self._anchor_shift(cond, anc[0], rule, x[sel])
                        xm = x[sel] + shifts[m]
                        x[sel] = self._refine(xm, tgt[m], rule,
                                              rule.guidance if auto else guidance, steps,
                                              g_anchor, cancel, net)
                        continue
                    xm = self._integrate(x[sel], *src[m], 1.0, grid[::-1], on_step, cancel,
                                         net=net)
                    x[sel] = self._integrate(xm, *tgt[m], guidance, grid,
                                             lambda k, f=on_step: f(k + steps), cancel, net=net)
                check_cancel(cancel)
                builder.add(*self._decode_counts(x, g_dev))
                labels.append((cond, b, member))
                done += b
                report(done)
            del x0
            adata = self._assemble(builder, labels)
            adata.obs[OBS.SOURCE_CELL] = np.asarray(cells.obs_names, dtype=str)
            # the source cells' own annotations (donor, batch, ...) travel with them; a name
            # the generated cells already use keeps the source's value as source_<name>
            for col in cells.obs.columns:
                name = str(col) if str(col) not in adata.obs else f"source_{col}"
                if name not in adata.obs:
                    adata.obs[name] = cells.obs[col].to_numpy()
            adata.obs_names = [f"{s}-{cond.perturbation_label}" for s in cells.obs_names]
        prov = self._provenance("perturb", [cond], seed, steps, guidance)
        prov.update(self._guidance_record([cond], [guidance], auto))
        prov.update(genes_found=len(mapping.found), genes_missing=len(mapping.missing),
                    source_cells=int(n))
        if anc is not None:
            prov["anchor"] = self._anchor_record(rule, {cond.label: _anchor_groups(anc)}, auto)
        adata.uns[UNS.PROVENANCE] = prov
        return adata

    def encode(self, cells) -> np.ndarray:
        """Standardised latent state (n, d+1) of given cells (VAE mean + log library)."""
        from .data.io import get_counts

        counts, _ = get_counts(cells)
        return self._encode_counts(counts, self.gene_mapping(cells).index)

    def _encode_counts(self, counts, index: np.ndarray) -> np.ndarray:
        import torch

        counts = counts.tocsr()
        out = []
        with torch.no_grad():
            for start in range(0, counts.shape[0], 4096):
                block = counts[start:start + 4096]
                dense = np.zeros((block.shape[0], len(self.genes)), np.float32)
                ok = index >= 0
                dense[:, ok] = block[:, index[ok]].toarray()
                xt = torch.as_tensor(dense, device=self.device)
                mu, _ = self.autoencoder.encode(xt)
                log_lib = torch.log(xt.sum(dim=1, keepdim=True).clamp_min(1.0))
                s = (torch.cat([mu, log_lib], dim=1) - self._mean) / self._std
                out.append(s.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    # -- genes -------------------------------------------------------------------------------------
    def gene_mapping(self, adata) -> GeneMapping:
        names = [str(g) for g in adata.var_names]
        exact = {g: i for i, g in enumerate(names)}
        upper: dict[str, int] = {}
        for i, g in enumerate(names):
            upper.setdefault(g.upper(), i)
        index = np.full(len(self.genes), -1, np.int64)
        for i, g in enumerate(self.genes):
            j = exact.get(g, upper.get(g.upper(), -1))
            index[i] = j
        found = [g for g, j in zip(self.genes, index, strict=False) if j >= 0]
        missing = [g for g, j in zip(self.genes, index, strict=False) if j < 0]
        used = set(index[index >= 0].tolist())
        return GeneMapping(len(self.genes), found, missing, len(names) - len(used), index)

    # -- output ------------------------------------------------------------------------------------
    def _builder(self, n_rows: int) -> CsrBuilder:
        # capacity 1.3x the expected non-zeros: untouched capacity is never committed
        return CsrBuilder(n_rows, len(self.genes), 1.3 * n_rows * len(self.genes) * self.density)

    def _run_id(self, mode: str, conds, n: int, seed, steps, guidance) -> str:
        """Eight hex digits naming one run: the same model, conditions, cell count, seed and
        settings give the same id (and the same cells); another run, another id, so generated
        files concatenate without duplicate cell names."""
        import hashlib
        import json

        g = [float(x) for x in guidance] if isinstance(guidance, list | tuple) \
            else float(guidance)
        key = json.dumps([self._weights_sha or self.name, mode, [c.to_dict() for c in conds],
                          int(n), int(seed), int(steps), g], sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:8]

    def _assemble(self, builder: CsrBuilder, labels, run_id: str = "gen"):
        import anndata as ad
        import pandas as pd

        counts, X = builder.finish()
        obs = self._obs(labels)
        obs.index = pd.Index([f"{run_id}-{i}" for i in range(counts.shape[0])])
        adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(self.genes)))
        adata.layers[LAYERS.COUNTS] = counts
        return adata

    @property
    def context_levels(self) -> list[str]:
        """The context levels (obs columns beside the cell type) the model's cells carry."""
        return [lv for lv in self.vocab.levels if lv != CELL_TYPE_LEVEL]

    def _obs(self, labels):
        """Per-cell labels as categoricals, built from one code per batch (no per-cell objects)."""
        import pandas as pd

        levels = self.context_levels
        rows = []
        for cond, *_ in labels:
            ctx = cond.context_dict()
            row = {OBS.CONDITION: cond.label, OBS.CELL_TYPE: cond.cell_type or "",
                   OBS.PERTURBATION: cond.perturbation_label,
                   OBS.PERTURBATION_TYPE: ("" if all(not p.type for p in cond.perturbations)
                                           else "+".join(p.type or ""
                                                         for p in cond.perturbations)),
                   OBS.DOSE: ("" if all(p.dose is None for p in cond.perturbations) else
                              "+".join("" if p.dose is None else f"{p.dose:g}"
                                       for p in cond.perturbations)),
                   OBS.IS_CONTROL: cond.is_control}
            row.update({lv: ctx.get(lv, "") for lv in levels})
            rows.append(row)
        sizes = np.array([lab[1] for lab in labels], np.int64)
        keys = [*OBS.CONDITION_COLUMNS, OBS.IS_CONTROL, *levels]
        cols = {}
        for k in keys:
            values = [r[k] for r in rows]
            if k == OBS.IS_CONTROL:
                cols[k] = np.repeat(np.array(values, bool), sizes)
                continue
            cats = sorted(set(values))
            code = {v: i for i, v in enumerate(cats)}
            codes = np.repeat(np.array([code[v] for v in values], np.int64), sizes)
            cols[k] = pd.Categorical.from_codes(codes, categories=cats)
        # the ensemble member of each cell: one per batch (generate) or one per cell (perturb)
        cols[OBS.MEMBER] = np.concatenate(
            [np.broadcast_to(np.asarray(m, np.int16), (b,)) if np.ndim(m) == 0
             else np.asarray(m, np.int16) for _, b, m in labels]) if labels else \
            np.zeros(0, np.int16)
        return pd.DataFrame(cols)

    def _guidance_record(self, conds, per_cond, auto: bool) -> dict:
        """Provenance keys saying how guidance was chosen: ``guidance_rule`` when it came from
        the model's per-evidence-class table, ``guidance_by_condition`` (JSON, label -> scale)
        when the conditions of one run used different scales."""
        import json

        out = {}
        if auto and self.guidance_by_evidence:
            out["guidance_rule"] = "by evidence class (sampling.guidance_by_evidence)"
        if len(set(per_cond)) > 1:
            out["guidance_by_condition"] = json.dumps(
                {c.label: float(g) for c, g in zip(conds, per_cond, strict=True)})
        return out

    @staticmethod
    def _anchor_record(rule, anchors: dict, auto: bool) -> dict:
        """Provenance of the conditions drawn from the latent baseline (engine.anchor)."""
        how = ("the perturbation's mean latent effect in the groups listed" if
               rule.match == "latent" else "a latent shift whose decoded expression moves by "
               "the expression-space baseline (additive or mean shift) of the groups listed")
        refined = ", refined by the flow" if rule.refine > 0 else " (not refined by the flow)"
        return {"method": f"control cells of the cell type + {how}{refined}",
                "match": rule.match, "refine": rule.refine, "guidance": rule.guidance if auto else None,
                "weights": rule.weights, **({"tau": rule.tau} if rule.weights == "kernel" else {}),
                **({"magnitude": rule.magnitude} if rule.magnitude != "mean_vector" else {}),
                **({"gain": rule.gain} if rule.gain != 1.0 else {}),
                "rule": "sampling.anchor", "source": rule.source,
                "conditions": {k: v for k, v in anchors.items()}}

    def _new_gene_provenance(self, conds) -> dict:
        """``new_genes`` (targets never perturbed in training) and their evidence note, for
        the provenance of a run that asked for any."""
        new = sorted({t for c in conds for t in self.space.new_targets(c)})
        return {"new_genes": new, "new_gene_evidence": _new_gene_note()} if new else {}

    def _provenance(self, mode: str, conds, seed, steps, guidance) -> dict:
        import json

        import torch

        return {"model": self.name, "model_path": str(self.path or ""),
                "weights_sha256": self._weights_sha, "engine_version": __version__,
                "torch_version": str(torch.__version__), "device": str(self.device), "mode": mode,
                "seed": int(seed), "steps": int(steps), "guidance": float(guidance),
                "objective": self.objective.name,
                "backbone": self.config["architecture"]["backbone"],
                "ensemble_members": int(self.members),
                "conditions_json": json.dumps([c.to_dict() for c in conds]),
                **self._new_gene_provenance(conds),
                "context_levels": list(self.context_levels),
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def _anchor_groups(anc) -> dict[str, float]:
    """The groups an anchored condition's latent effect came from, with their weights."""
    return {c.label: round(float(w), 4) for c, w in zip(anc[1], anc[2], strict=True)}


def _new_gene_note() -> str:
    from .effects import EVIDENCE_LABELS

    return EVIDENCE_LABELS["new_gene"]


def _whole(value, what: str, *, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; bools, fractions and non-numbers are refused."""
    import numbers

    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if not ok and isinstance(value, float | np.floating) and np.isfinite(value) \
            and float(value).is_integer():
        value, ok = int(value), True
    if not ok:
        raise PerturbStudioError(f"{what} must be a whole number between {lo:,} and {hi:,}, "
                                 f"got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise PerturbStudioError(f"{what} must be between {lo:,} and {hi:,}, got {value:,}")
    return value


def _cell_count(n) -> int:
    import numbers

    if isinstance(n, numbers.Integral) and not isinstance(n, bool | np.bool_) and int(n) < 1:
        raise PerturbStudioError(f"number of cells must be at least 1, got {int(n)}")
    return _whole(n, "the number of cells", lo=1, hi=10**15)


def _check_seed(seed) -> int:
    """Seeds torch accepts: whole numbers up to 2^64 - 1 (negative ones down to -2^63)."""
    import numbers

    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool | np.bool_) \
            and -(2**63) <= int(seed) < 0:
        return int(seed)
    return _whole(seed, "the seed", lo=0, hi=MAX_SEED)


def _check_sampling(steps, guidance) -> None:
    steps = _whole(steps, "sampling steps", lo=1, hi=MAX_STEPS)
    try:
        g = float(guidance)
    except (TypeError, ValueError):
        raise PerturbStudioError(f"guidance must be a number between 0 and {MAX_GUIDANCE:g}, "
                                 f"got {guidance!r}") from None
    if isinstance(guidance, bool) or not np.isfinite(g) or not 0.0 <= g <= MAX_GUIDANCE:
        raise PerturbStudioError(f"guidance must be a number between 0 and {MAX_GUIDANCE:g}, "
                                 f"got {guidance!r}")


def _check_not_empty(counts, mapping: GeneMapping, names) -> None:
    """Refuse cells without a single count in the model's genes (they cannot be encoded)."""
    cols = np.zeros(counts.shape[1], np.float32)
    cols[mapping.index[mapping.index >= 0]] = 1.0
    lib = np.asarray(counts @ cols).ravel()
    empty = np.flatnonzero(~(lib > 0))
    if not len(empty):
        return
    n, k = counts.shape[0], len(empty)
    where = f"in the {len(mapping.found)} model genes found in the data"
    if k == n:
        raise DataError(f"all {n:,} given cells have no counts {where}; nothing can be encoded "
                        "(are these raw counts of the right cells and genes?)")
    raise DataError(f"{k:,} of {n:,} given cells have no counts {where} (first: "
                    f"{str(names[empty[0]])!r}); they cannot be encoded; remove them (keep cells "
                    "with at least one count) and try again")


def _available_memory() -> int | None:
    return available_memory()
