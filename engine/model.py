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
from .checkpoint import CONFIG, WEIGHTS, load_weights, read_card, read_config, sha256
from .conditions.spec import Condition, ConditionSpace
from .conditions.vocab import CELL_TYPE_LEVEL, CondArrays, Vocab
from .errors import ConditionError, DataError, ModelError, PerturbStudioError, ResourceError
from .progress import CancelToken, ProgressFn, Reporter, check_cancel

MAX_CELLS = 5_000_000


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
                 card: dict | None = None, device: str = "cpu") -> None:
        import torch

        from .diffusion.schedules import OBJECTIVES

        self.config, self.path, self.card = config, path, card or {}
        self.genes: list[str] = list(config["genes"])
        self.vocab = Vocab.from_dict(config["vocab"])
        self.space = ConditionSpace.from_dict(config["space"])
        self.device = device
        self.autoencoder = autoencoder.to(device).eval()
        self.net = net.to(device).eval()
        arch = config["architecture"]
        self.objective = OBJECTIVES[arch.get("objective", "rectified_flow")]()
        stats = config["latent_stats"]
        self._mean = torch.tensor(stats["mean"], dtype=torch.float32, device=device)
        self._std = torch.tensor(stats["std"], dtype=torch.float32, device=device)
        self.latent_dim = int(arch["latent_dim"])
        self._weights_sha = config.get("_weights_sha256", "")

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def build_modules(config: dict):
        from .models.autoencoder import NBAutoencoder
        from .models.flow import LatentFlowNet

        arch, vocab = config["architecture"], Vocab.from_dict(config["vocab"])
        ae = NBAutoencoder(len(config["genes"]), arch["latent_dim"], arch["ae_hidden"],
                           dispersion=arch.get("dispersion", "gene"))
        net = LatentFlowNet(arch["latent_dim"] + 1,
                            [len(vocab.level_values[lv]) for lv in vocab.levels],
                            len(vocab.targets), len(vocab.types), backbone=arch["backbone"],
                            cond_dim=arch["cond_dim"], **arch.get("backbone_kw", {}))
        return ae, net

    @classmethod
    def load(cls, name_or_dir: str | os.PathLike, *, device: str = "auto") -> PerturbModel:
        """Load a model by name (shipped or user model) or from a folder path."""
        import torch

        from .device import resolve_device
        from .registry import resolve_model

        folder = resolve_model(name_or_dir)
        config = read_config(folder)
        try:
            ae, net = cls.build_modules(config)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{folder / CONFIG}: architecture entry is invalid ({e!r})") from None
        expected = {f"autoencoder.{k}": v.shape for k, v in ae.state_dict().items()}
        expected.update({f"net.{k}": v.shape for k, v in net.state_dict().items()})
        state = load_weights(folder, expected)
        ae.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("autoencoder.")})
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        for t in state.values():
            if not torch.isfinite(t).all():
                raise ModelError(f"{folder / WEIGHTS} contains NaN or infinite weights")
        config = dict(config, _weights_sha256=sha256(folder / WEIGHTS))
        return cls(config, ae, net, path=folder, card=read_card(folder),
                   device=resolve_device(device))

    def state_dict(self) -> dict:
        out = {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        out.update({f"net.{k}": v for k, v in self.net.state_dict().items()})
        return out

    def save(self, folder: str | os.PathLike, *, card: dict | None = None,
             card_md: str | None = None, overwrite: bool = False) -> Path:
        """Write the model folder atomically; an existing model there is replaced only with
        ``overwrite``, and a folder holding anything else is refused (ModelError)."""
        from .checkpoint import save_folder

        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        self.path = save_folder(folder, config, self.state_dict(), card or self.card, card_md,
                                overwrite=overwrite)
        self.card = card or self.card
        self._weights_sha = sha256(self.path / WEIGHTS)
        return self.path

    # -- properties ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.get("name") or (self.path.name if self.path else "unnamed")

    @property
    def default_steps(self) -> int:
        return int(self.config.get("sampling", {}).get("steps", 20))

    @property
    def default_guidance(self) -> float:
        return float(self.config.get("sampling", {}).get("guidance", 1.0))

    # -- conditions ------------------------------------------------------------------------------
    def check_condition(self, condition: Condition) -> Condition:
        if not isinstance(condition, Condition):
            raise ConditionError(f"expected a Condition, got {type(condition).__name__}")
        self.space.validate(condition)
        return self.space.complete(condition)

    def _embed(self, arrays: CondArrays):
        import torch

        dev = self.device
        with torch.no_grad():
            return self.net.embed(torch.as_tensor(arrays.levels, device=dev),
                                  torch.as_tensor(arrays.targets, device=dev),
                                  torch.as_tensor(arrays.types, device=dev),
                                  torch.as_tensor(arrays.doses, device=dev),
                                  torch.as_tensor(arrays.null, device=dev))

    def _cond_pair(self, condition: Condition):
        """Embedding of the condition and of the "unconditional" null (for guidance), (1, C)."""
        arr = self.vocab.encode([condition])
        null = CondArrays(np.zeros_like(arr.levels), arr.targets, arr.types, arr.doses,
                          np.ones(1, bool))
        return self._embed(arr), self._embed(null)

    # -- the sampling loop -----------------------------------------------------------------------
    def _integrate(self, x, c, c_null, guidance: float, grid: Sequence[float], on_step=None,
                   cancel: CancelToken | None = None):
        import torch

        with torch.no_grad():
            for i in range(len(grid) - 1):
                check_cancel(cancel)
                t = torch.full((1,), grid[i], device=x.device)
                pred = self.net(x, t, c)
                if guidance != 1.0:
                    pred_u = self.net(x, t, c_null)
                    pred = pred_u + guidance * (pred - pred_u)
                x = self.objective.step(x, pred, grid[i], grid[i + 1])
                if on_step is not None:
                    on_step(i + 1)
        return x

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
        size = int(self.config.get("sampling", {}).get("batch_size", 2048))
        return [min(size, n - i) for i in range(0, n, size)]

    def _check_memory(self, n: int) -> None:
        if n < 1:
            raise PerturbStudioError(f"number of cells must be at least 1, got {n}")
        if n > MAX_CELLS:
            raise ResourceError(f"{n:,} cells is more than one run can generate "
                                f"(at most {MAX_CELLS:,}); split the experiment")
        density = float(self.config.get("density", 0.2))
        need = n * len(self.genes) * density * 16 + 2048 * len(self.genes) * 4 * 10
        avail = _available_memory()
        if avail is not None and need > 0.8 * avail:
            raise ResourceError(f"generating {n:,} cells would need about {need / 2**30:.1f} GiB "
                                f"of memory but only {avail / 2**30:.1f} GiB is available; "
                                "generate fewer cells per run")

    def _generators(self, seed: int):
        import torch

        cpu = torch.Generator().manual_seed(int(seed))
        dev = torch.Generator(device=self.device).manual_seed(int(seed) + 1)
        return cpu, dev

    # -- mode 1: de novo ------------------------------------------------------------------------
    def generate(self, condition: Condition, n: int, *, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None):
        """Sample ``n`` new cells of ``condition`` from noise. Returns an AnnData (see module doc).

        Same seed, model and device give identical cells."""
        return self.generate_many([condition], n, include_control=False, seed=seed, steps=steps,
                                  guidance=guidance, progress=progress, cancel=cancel)

    def generate_many(self, conditions: Sequence[Condition], n: int, *,
                      include_control: bool = True, seed: int = 0, steps: int | None = None,
                      guidance: float | None = None, progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None):
        """Generate ``n`` cells for each condition as one experiment; with ``include_control``
        the matching control of every condition is generated too (once per distinct control)."""
        import torch

        conds = [self.check_condition(c) for c in conditions]
        if not conds:
            raise ConditionError("no condition given")
        if include_control:
            for c in list(conds):
                if c.control() not in conds:
                    conds.append(c.control())
        n = int(n)
        self._check_memory(n * len(conds))
        steps = int(steps or self.default_steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        _check_sampling(steps, guidance)
        grid = self.objective.grid(steps)
        d = self.latent_dim + 1
        report = Reporter(progress, n * len(conds), "generating cells")
        g_cpu, g_dev = self._generators(seed)
        pieces, labels = [], []
        done = 0
        for cond in conds:
            c, c_null = self._cond_pair(cond)
            for b in self._batches(n):
                x = torch.randn(b, d, generator=g_cpu).to(self.device)

                def on_step(k, _b=b, _done=done):
                    report(_done + int(_b * k / (steps + 1)))

                x = self._integrate(x, c, c_null, guidance, grid, on_step, cancel)
                check_cancel(cancel)
                pieces.append(self._decode_counts(x, g_dev))
                labels.append((cond, b))
                done += b
                report(done)
        check_cancel(cancel)
        adata = self._assemble(pieces, labels)
        adata.uns["perturb_studio"] = self._provenance("denovo", conds, seed, steps, guidance)
        return adata

    # -- mode 2: perturb given cells ----------------------------------------------------------------
    def perturb(self, cells, condition: Condition, *, seed: int = 0, steps: int | None = None,
                guidance: float | None = None, progress: ProgressFn | None = None,
                cancel: CancelToken | None = None, min_gene_fraction: float = 0.5):
        """Produce the perturbed counterpart of each given cell (an AnnData with raw counts).

        The cells should be controls of ``condition``'s cell type. Each output cell keeps its
        input's identity (``obs['source_cell']``); model genes missing from the data are treated
        as zero and counted in ``uns['perturb_studio']['genes_missing']``."""
        import torch

        from .data.io import get_counts

        cond = self.check_condition(condition)
        mapping = self.gene_mapping(cells)
        if mapping.fraction_found < min_gene_fraction:
            raise DataError(f"only {mapping.describe()}; at least {min_gene_fraction:.0%} are "
                            "needed to encode these cells (are gene symbols in var_names?)")
        counts, _ = get_counts(cells)
        n = counts.shape[0]
        self._check_memory(n)
        steps = int(steps or self.default_steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        _check_sampling(steps, guidance)
        x0 = self._encode_counts(counts, mapping.index)                  # (n, d+1) standardised
        c_src, c_src_null = self._cond_pair(cond.control())
        c_tgt, c_tgt_null = self._cond_pair(cond)
        grid = self.objective.grid(steps)
        total = 2 * steps
        report = Reporter(progress, n, "perturbing cells")
        _, g_dev = self._generators(seed)
        pieces, labels, done = [], [], 0
        for start, b in zip(np.cumsum([0] + self._batches(n)[:-1]), self._batches(n), strict=False):
            x = torch.as_tensor(x0[start:start + b], device=self.device)

            def on_step(k, _b=b, _done=done):
                report(_done + int(_b * k / (total + 1)))

            x = self._integrate(x, c_src, c_src_null, 1.0, grid[::-1], on_step, cancel)
            x = self._integrate(x, c_tgt, c_tgt_null, guidance, grid,
                                lambda k, f=on_step: f(k + steps), cancel)
            check_cancel(cancel)
            pieces.append(self._decode_counts(x, g_dev))
            labels.append((cond, b))
            done += b
            report(done)
        adata = self._assemble(pieces, labels)
        adata.obs["source_cell"] = np.asarray(cells.obs_names, dtype=str)
        adata.obs_names = [f"{s}-{cond.perturbation_label}" for s in cells.obs_names]
        prov = self._provenance("perturb", [cond], seed, steps, guidance)
        prov.update(genes_found=len(mapping.found), genes_missing=len(mapping.missing),
                    source_cells=int(n))
        adata.uns["perturb_studio"] = prov
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
    def _assemble(self, pieces, labels):
        import anndata as ad
        import pandas as pd
        import scipy.sparse as sp

        G = len(self.genes)
        indptr, indices, data, row0 = [np.zeros(1, np.int64)], [], [], 0
        for idx, values, rows in pieces:
            r = idx // G
            indptr.append(np.cumsum(np.bincount(r, minlength=rows)) + (indptr[-1][-1]))
            indices.append((idx % G).astype(np.int32))
            data.append(values)
            row0 += rows
        indptr = np.concatenate(indptr)
        indices = np.concatenate(indices) if indices else np.zeros(0, np.int32)
        data = np.concatenate(data) if data else np.zeros(0, np.int32)
        counts = sp.csr_matrix((data, indices, indptr), shape=(row0, G))
        lib = np.diff(indptr)
        rowsum = np.bincount(np.repeat(np.arange(row0), lib), weights=data, minlength=row0)
        scale = np.repeat(1e4 / np.maximum(rowsum, 1.0), lib)
        X = sp.csr_matrix((np.log1p(data * scale).astype(np.float32), indices.copy(),
                           indptr.copy()), shape=counts.shape)
        obs = self._obs(labels)
        obs.index = pd.Index([f"gen{i}" for i in range(row0)])
        adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(self.genes)))
        adata.layers["counts"] = counts
        return adata

    def _obs(self, labels):
        import pandas as pd

        cols: dict[str, list] = {"condition": [], "cell_type": [], "perturbation": [],
                                 "perturbation_type": [], "dose": [], "is_control": []}
        levels = [lv for lv in self.vocab.levels if lv != CELL_TYPE_LEVEL]
        for lv in levels:
            cols[lv] = []
        for cond, b in labels:
            ctx = cond.context_dict()
            row = {"condition": cond.label, "cell_type": cond.cell_type or "",
                   "perturbation": cond.perturbation_label,
                   "perturbation_type": "+".join(p.type or "" for p in cond.perturbations),
                   "dose": "+".join("" if p.dose is None else f"{p.dose:g}"
                                    for p in cond.perturbations),
                   "is_control": cond.is_control}
            row.update({lv: ctx.get(lv, "") for lv in levels})
            for k, v in row.items():
                cols[k].extend([v] * b)
        obs = pd.DataFrame(cols)
        for k in obs.columns:
            if k != "is_control":
                obs[k] = obs[k].astype("category")
        return obs

    def _provenance(self, mode: str, conds, seed, steps, guidance) -> dict:
        import json

        import torch

        return {"model": self.name, "model_path": str(self.path or ""),
                "weights_sha256": self._weights_sha, "engine_version": __version__,
                "torch_version": str(torch.__version__), "device": str(self.device), "mode": mode,
                "seed": int(seed), "steps": int(steps), "guidance": float(guidance),
                "objective": self.objective.name,
                "backbone": self.config["architecture"]["backbone"],
                "conditions_json": json.dumps([c.to_dict() for c in conds]),
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def _check_sampling(steps: int, guidance: float) -> None:
    if not 1 <= steps <= 1000:
        raise PerturbStudioError(f"sampling steps must be between 1 and 1000, got {steps}")
    if not np.isfinite(guidance) or not 0.0 <= guidance <= 20.0:
        raise PerturbStudioError(f"guidance must be between 0 and 20, got {guidance}")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
