"""The real cells a model carries: ``reference.safetensors`` in the model folder.

Two things, both computed from the model's training cells over the model's genes:

- a stratified sample of at most :data:`MAX_REFERENCE_CELLS` real cells (raw counts, CSR), so
  the app can always put generated cells beside real ones of the right kind, and show
  predicted against real without opening a file;
- the mean log1p(normalize_total 1e4) expression of every training condition group and its
  number of cells, from which :mod:`engine.effects` computes the ``mean_shift`` and
  ``additive`` baselines of any condition.

Stored with safetensors (numpy arrays, no pickle); the condition of each group is JSON in the
file's metadata. Everything is checked on reading (dtypes, shapes, index ranges, finite
non-negative values); a damaged file raises :class:`ModelError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import MAX_REFERENCE_BYTES, REFERENCE, read_weights_header
from .conditions.spec import Condition, group_key
from .errors import ModelError

FORMAT = "perturb-studio-reference"
MAX_REFERENCE_CELLS = 2000
MIN_PER_GROUP = 10            # every group keeps at least this many (or all it has)

_DTYPES = {"cells.indptr": "I64", "cells.indices": "I32", "cells.data": "F32",
           "cells.group": "I32", "groups.mean": "F32", "groups.n": "I64"}


@dataclass
class Reference:
    groups: list[Condition]
    means: np.ndarray            # (n_groups, n_genes) float32
    n: np.ndarray                # (n_groups,) training cells per group
    indptr: np.ndarray           # CSR of the sampled cells (counts), model gene order
    indices: np.ndarray
    data: np.ndarray
    group: np.ndarray            # (n_cells,) group of each sampled cell
    n_genes: int

    @property
    def n_cells(self) -> int:
        return int(len(self.group))

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, counts, codes: np.ndarray, conditions: list[Condition], *, seed: int = 0,
              max_cells: int = MAX_REFERENCE_CELLS) -> Reference:
        """From training counts (CSR, cells x model genes), each cell's group code into
        ``conditions`` (completed to the model's conventions)."""
        import scipy.sparse as sp

        from .data.preprocess import log1p_normalize

        counts = sp.csr_matrix(counts)
        g = counts.shape[1]
        k = len(conditions)
        means = np.zeros((k, g), np.float32)
        n = np.zeros(k, np.int64)
        for i in range(k):
            rows = np.flatnonzero(codes == i)
            n[i] = len(rows)
            for s in range(0, len(rows), 4096):
                block = log1p_normalize(counts[rows[s:s + 4096]], dtype=np.float64)
                means[i] += np.asarray(block.sum(0)).ravel().astype(np.float32)
            if len(rows):
                means[i] /= len(rows)
        rng = np.random.default_rng(seed)
        quota = _quota(n, max_cells)
        picked = []
        for i in range(k):
            rows = np.flatnonzero(codes == i)
            if quota[i]:
                picked.append(np.sort(rng.choice(rows, quota[i], replace=False)))
        rows = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        sub = counts[rows].astype(np.float32)
        sub.sort_indices()
        return cls(list(conditions), means, n, sub.indptr.astype(np.int64),
                   sub.indices.astype(np.int32), sub.data.astype(np.float32),
                   codes[rows].astype(np.int32), g)

    @classmethod
    def build_streaming(cls, chunks, codes: np.ndarray, conditions: list[Condition], take, *,
                        seed: int = 0, max_cells: int = MAX_REFERENCE_CELLS) -> Reference:
        """As :meth:`build`, from data on disk: ``chunks`` yields (positions, CSR counts over the
        model genes) covering every training cell once; ``take(positions)`` reads the sampled
        cells' counts. The group means are accumulated chunk by chunk; the same quota rule
        picks the sample."""
        import scipy.sparse as sp

        from .data.preprocess import log1p_normalize

        k = len(conditions)
        sums, g = None, None
        for pos, m in chunks:
            block = log1p_normalize(m, dtype=np.float64)
            g = m.shape[1]
            onehot = sp.csr_matrix((np.ones(len(pos)), (codes[pos], np.arange(len(pos)))),
                                   shape=(k, len(pos)))
            part = np.asarray((onehot @ block).todense() if sp.issparse(block)
                              else onehot @ block)
            sums = part if sums is None else sums + part
        n = np.bincount(codes, minlength=k).astype(np.int64)
        means = (sums / np.maximum(n, 1)[:, None]).astype(np.float32)
        rng = np.random.default_rng(seed)
        quota = _quota(n, max_cells)
        picked = [np.sort(rng.choice(np.flatnonzero(codes == i), quota[i], replace=False))
                  for i in range(k) if quota[i]]
        rows = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        sub = sp.csr_matrix(take(rows), dtype=np.float32)
        sub.sort_indices()
        return cls(list(conditions), means, n, sub.indptr.astype(np.int64),
                   sub.indices.astype(np.int32), sub.data.astype(np.float32),
                   codes[rows].astype(np.int32), int(g if g is not None else sub.shape[1]))

    # -- reading and writing --------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors = {"cells.indptr": self.indptr, "cells.indices": self.indices,
                   "cells.data": self.data, "cells.group": self.group,
                   "groups.mean": self.means, "groups.n": self.n}
        meta = {"format": FORMAT, "n_genes": str(self.n_genes),
                "groups": json.dumps([c.to_dict() for c in self.groups])}
        return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)

    def group_stats(self) -> GroupStats:
        return GroupStats(self.groups, self.means, self.n)

    def to_anndata(self, model):
        """The sampled cells as an AnnData shaped like generated cells (obs condition columns,
        counts in ``layers["counts"]``, X log-normalised), ``obs["source"] = "reference"``."""
        import anndata as ad
        import pandas as pd
        import scipy.sparse as sp

        from .data.preprocess import log1p_normalize
        from .keys import LAYERS

        counts = sp.csr_matrix((self.data, self.indices, self.indptr),
                               shape=(self.n_cells, self.n_genes))
        order = np.argsort(self.group, kind="stable")
        counts = counts[order]
        sizes = np.bincount(self.group[order], minlength=len(self.groups))
        labels = [(c, int(b), 0) for c, b in zip(self.groups, sizes, strict=True) if b]
        obs = model._obs(labels)
        obs = obs.drop(columns=["member"], errors="ignore")
        obs.index = pd.Index([f"ref{i}" for i in range(counts.shape[0])])
        out = ad.AnnData(X=log1p_normalize(counts), obs=obs,
                         var=pd.DataFrame(index=pd.Index(model.genes)))
        out.layers[LAYERS.COUNTS] = counts
        out.obs["source"] = "reference"
        return out


@dataclass
class GroupStats:
    """Mean log1p-normalised expression of every training condition group, over the model's
    genes (stored with the model in ``reference.safetensors``)."""

    conditions: list[Condition]
    means: np.ndarray        # (groups, G)
    counts: np.ndarray       # (groups,) training cells

    def __post_init__(self) -> None:
        self._index = {group_key(c): i for i, c in enumerate(self.conditions)}

    def mean(self, c: Condition) -> np.ndarray | None:
        i = self._index.get(group_key(c))
        return None if i is None or self.counts[i] < 3 else self.means[i]

    def effect(self, c: Condition) -> np.ndarray | None:
        a, b = self.mean(c), self.mean(c.control())
        return None if a is None or b is None else a - b

    def mean_effect(self, c: Condition, *, exclude: bool) -> np.ndarray | None:
        pk = tuple(sorted((p.target, p.type) for p in c.perturbations))
        own = group_key(c)
        effects = []
        for d in self.conditions:
            if d.is_control or tuple(sorted((p.target, p.type) for p in d.perturbations)) != pk:
                continue
            if exclude and group_key(d) == own:
                continue
            e = self.effect(d)
            if e is not None:
                effects.append(e)
        return np.mean(effects, axis=0) if effects else None


def _quota(n: np.ndarray, budget: int) -> np.ndarray:
    """Cells per group: proportional to the group's size, every group at least
    min(MIN_PER_GROUP, size), the total at most ``budget`` (when the floors fit in it)."""
    n = np.asarray(n, np.int64)
    if n.sum() <= budget:
        return n.copy()
    floor = np.minimum(n, MIN_PER_GROUP)
    left = max(budget - int(floor.sum()), 0)
    extra = n - floor
    share = np.floor(extra * (left / max(int(extra.sum()), 1))).astype(np.int64)
    return np.minimum(floor + share, n)


def reference_cell_count(folder: str | Path) -> int:
    """Cells in a model folder's reference file, from its header alone (0 without one)."""
    path = Path(folder) / REFERENCE
    if not path.is_file():
        return 0
    try:
        tensors, _, _ = read_weights_header(path)
        return int(tensors["cells.group"][1][0])
    except (ModelError, KeyError, IndexError, TypeError):
        return 0


def read_reference(folder: str | Path, genes: list[str]) -> Reference | None:
    """The reference of a model folder (None when it has none), fully checked."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / REFERENCE
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_REFERENCE_BYTES:
        raise ModelError(f"{path} is {size / 2**20:,.1f} MiB; at most "
                         f"{MAX_REFERENCE_BYTES / 2**20:,.0f} MiB is allowed")
    tensors, _, _ = read_weights_header(path)
    for name, dtype in _DTYPES.items():
        if name not in tensors:
            raise ModelError(f"{path} lacks the array {name}; the file is damaged")
        if tensors[name][0] != dtype:
            raise ModelError(f"{path}: {name} is stored as {tensors[name][0]}, expected {dtype}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arr = {name: f.get_tensor(name) for name in _DTYPES}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path} is not a readable reference file ({str(e)[:200]})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not a Perturb Studio reference file")
    try:
        groups = [Condition.from_dict(d) for d in json.loads(meta.get("groups", "[]"))]
        n_genes = int(meta.get("n_genes", -1))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ModelError(f"{path}: its list of condition groups is unreadable ({e})") from None
    g = len(genes)
    k = len(groups)
    ip, ix, dv, grp = (arr["cells.indptr"], arr["cells.indices"], arr["cells.data"],
                       arr["cells.group"])
    means, n = arr["groups.mean"], arr["groups.n"]

    def bad(why: str) -> ModelError:
        return ModelError(f"{path} is damaged: {why}")

    if n_genes != g:
        raise bad(f"it describes {n_genes} genes, the model has {g}")
    if means.shape != (k, g) or n.shape != (k,):
        raise bad(f"group arrays have shapes {means.shape} / {n.shape}, expected {(k, g)}")
    if ip.ndim != 1 or len(ip) != len(grp) + 1 or ip[0] != 0 or np.any(np.diff(ip) < 0) \
            or ip[-1] != len(ix) or len(ix) != len(dv):
        raise bad("its cell index arrays are inconsistent")
    if len(ix) and (ix.min() < 0 or ix.max() >= g):
        raise bad("a cell's gene index lies outside the model's genes")
    if len(grp) and (grp.min() < 0 or grp.max() >= k):
        raise bad("a cell's group lies outside the list of groups")
    if not np.all(np.isfinite(dv)) or (dv < 0).any() or not np.all(np.isfinite(means)) \
            or (n < 0).any():
        raise bad("it holds negative, NaN or infinite values")
    return Reference(groups, means, n, ip, ix, dv, grp, g)


__all__ = ["GroupStats", "Reference", "read_reference", "reference_cell_count", "MAX_REFERENCE_CELLS"]
