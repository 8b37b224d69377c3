"""The table behind the UMAP: which cells are embedded together and what each point is.

No Qt: :func:`umap_parts` runs on a worker thread (it subsamples and labels the cells), the
rest is asked by the Results page when it colours the points or describes the one under the
mouse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: At most this many of the user's cells are embedded with the generated ones.
MAX_REAL_CELLS = 20_000
#: The open dataset is embedded with the generated cells only when it holds at least this
#: fraction of the model's genes (else the UMAP would place cells on a handful of genes).
MIN_GENES_FOUND = 0.8


@dataclass(frozen=True)
class RealCells:
    """Which real cells the UMAP shows beside the generated ones, and why."""

    adata: Any                   # AnnData, or None: generated cells alone
    kind: str                    # 'dataset' | 'reference' | 'none'
    reason: str = ""             # why not the open dataset ("" when it is shown)
    source: str = ""             # the dataset's file name
    cell_type_key: str | None = None
    perturbation_key: str | None = None

    def status(self, n_generated: int, n_real: int) -> str:
        """The UMAP status line."""
        if self.kind == "dataset":
            return (f"{n_generated:,} generated cells with {n_real:,} real cells from "
                    f"{self.source or 'your data'}.")
        if self.kind == "reference":
            return (f"{n_generated:,} generated cells with the model's own {n_real:,} reference "
                    f"cells (real training cells stored with the model): {self.reason}.")
        return f"{n_generated:,} generated cells alone: {self.reason}."


def choose_real_cells(model, dataset=None, schema=None, *, data_name: str = "") -> RealCells:
    """The open dataset when its genes match the model's (at least :data:`MIN_GENES_FOUND` of the
    model's genes found), else the model's own reference cells (a sample of its real training
    cells), else none. Runs on a worker thread (reading the reference cells reads a file)."""
    name = data_name or "the open dataset"
    keys = (getattr(schema, "cell_type_key", None), getattr(schema, "perturbation_key", None))
    if dataset is not None and model is None:   # no model to compare genes with
        return RealCells(dataset, "dataset", "", data_name, *keys)
    why = "no dataset is open"
    if dataset is not None:
        mapping = model.gene_mapping(dataset)
        if mapping.fraction_found >= MIN_GENES_FOUND:
            return RealCells(dataset, "dataset", "", data_name, *keys)
        why = (f"{name} shares only {len(mapping.found):,} of {mapping.n_model:,} model genes "
               f"(at least {MIN_GENES_FOUND:.0%} are needed to embed it with the generated cells)")
    ref = None
    if int(getattr(model, "n_reference_cells", 0) or 0) > 0:
        ref = model.reference_cells()
    if ref is not None and ref.n_obs:
        return RealCells(ref, "reference", why, data_name, "cell_type", "perturbation")
    return RealCells(None, "none", why + "; this model carries no reference cells", data_name)


def umap_parts(experiment, real=None, schema=None, *, max_real: int = MAX_REAL_CELLS,
               real_source: str = "real") -> tuple[dict[str, Any], Any]:
    """The AnnData to embed (``{"generated": ..., "real": ...}``) and one row per cell of them,
    in the same order: ``source`` (generated / ``real_source``), ``condition`` (real cells:
    ``"real: "`` and their perturbation label) and ``cell type`` ("" when unknown).

    ``real`` (the loaded dataset, or None) is subsampled to ``max_real`` cells with a fixed seed,
    so the same experiment always shows the same real cells.
    """
    import numpy as np
    import pandas as pd

    parts = {"generated": experiment.adata}
    gen_obs = experiment.adata.obs
    meta = [pd.DataFrame({
        "source": "generated",
        "condition": gen_obs["condition"].astype(str).to_numpy(),
        "cell type": gen_obs["cell_type"].astype(str).to_numpy() if "cell_type" in gen_obs else "",
    })]
    if real is not None:
        real_ad = real
        if real.n_obs > max_real:
            idx = np.sort(np.random.default_rng(0).choice(real.n_obs, max_real, replace=False))
            real_ad = real[idx]
        parts["real"] = real_ad
        obs = real_ad.obs
        pk = schema.perturbation_key if schema is not None else None
        ck = schema.cell_type_key if schema is not None else None
        cond = (obs[pk].astype(str).to_numpy() if pk and pk in obs
                else np.full(real_ad.n_obs, "cells", dtype=object))
        meta.append(pd.DataFrame({
            "source": real_source,
            "condition": np.asarray(["real: " + str(c) for c in cond], dtype=object),
            "cell type": obs[ck].astype(str).to_numpy() if ck and ck in obs else "",
        }))
    return parts, pd.concat(meta, ignore_index=True)


def describe_point(meta, i: int, gene: tuple[str, Any] | None = None) -> str:
    """One line about point ``i``: its source, condition, cell type (and the gene's value when
    the points are coloured by a gene)."""
    row = meta.iloc[i]
    ct = f" · cell type {row['cell type']}" if row["cell type"] else ""
    extra = f" · {gene[0]} = {gene[1][i]:.2f}" if gene is not None else ""
    return f"cell {i:,} · {row['source']} · {row['condition']}{ct}{extra}"


def find_gene(name: str, parts: dict[str, Any], var_names) -> str | None:
    """``name`` as the embedded cells spell it (exact, else case-insensitive among
    ``var_names``), or None when it is not a gene of them."""
    if any(name in a.var_names for a in parts.values()):
        return name
    matches = [g for g in var_names if str(g).upper() == name.upper()]
    return str(matches[0]) if matches else None


def category_order(values, column: str) -> tuple[list[str], set[str]]:
    """The legend order of the ``column`` values and those drawn in grey: by condition, the
    generated conditions first and the real cells' (greyed) after."""
    order = list(dict.fromkeys(values))
    if column != "condition":
        return order, set()
    gen = [v for v in order if not v.startswith("real: ")]
    real = [v for v in order if v.startswith("real: ")]
    return gen + real, set(real)
