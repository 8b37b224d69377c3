"""The typed messages of the app: what a page asks for (requests) and what a job hands back
(results). Plain frozen dataclasses, no Qt: a page builds a request from its widgets and emits
it; the controller passes its fields to the engine; a worker returns a result whose fields are
read by name (never ``r[0]``, never a dict whose keys drift between the page and the window).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- requests (page -> controller) ------------------------------------------------------------


@dataclass(frozen=True)
class GenerateRequest:
    """Compose page: generate cells for these conditions, each with its matching control."""

    conditions: tuple            # engine Conditions, in the order they were queued
    n: int                       # cells per condition (and per matching control)
    seed: int
    steps: int                   # sampling steps
    guidance: float | None       # None: the model's choice for each condition's evidence class

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))

    @property
    def n_controls(self) -> int:
        """Matching controls generated besides the conditions (those not queued already)."""
        return len({c.control() for c in self.conditions} - set(self.conditions))

    @property
    def n_total(self) -> int:
        """Cells the run generates: ``n`` per condition and per matching control."""
        return self.n * (len(self.conditions) + self.n_controls)


@dataclass(frozen=True, eq=False)
class PerturbRequest:
    """Perturb page: perturb these control cells of the loaded dataset."""

    cell_index: Any              # numpy array of row positions in the loaded dataset
    condition: Any               # engine Condition (complete for the model's space)
    seed: int
    steps: int                   # sampling steps (each way)


@dataclass(frozen=True)
class TrainRequest:
    """Train page: train a new model on the loaded dataset with its column roles."""

    name: str                    # the new model's name (its folder in the user models)
    backbone: str                # a backbone name the engine knows ("mlp", "transformer")
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)  # train_model keyword arguments


# -- results (job -> controller) --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    adata: Any                   # AnnData (of a large h5ad: a random sample of its cells)
    summary: Any                 # engine.DatasetSummary
    schema: Any                  # engine.Schema guessed from the columns
    backed: Any = None           # engine.BackedDataset of a large h5ad: training streams it


@dataclass(frozen=True)
class ModelList:
    infos: tuple = ()                           # engine.ModelInfo of every usable model
    broken: tuple[tuple[Path, str], ...] = ()   # (folder, reason) of folders that cannot be used
    select: str | None = None                   # the name to select in the list


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Any                   # engine.PerturbModel
    device: Mapping[str, str]    # engine.device_info(): kind, name, torch


@dataclass(frozen=True)
class SaveError:
    message: str
    details: str = ""


@dataclass(frozen=True, eq=False)
class RunOutput:
    """Cells a generation or perturbation produced, and where they were saved automatically."""

    adata: Any
    saved_to: str | None = None
    save_error: SaveError | None = None   # the cells are kept even when saving failed


@dataclass(frozen=True, eq=False)
class Analysis:
    """The heatmap of the genes that change most, and the DE table of the first condition."""

    genes: list
    matrix: Any                  # genes x conditions
    labels: list                 # condition labels (heatmap columns)
    note: str                    # said above the heatmap instead of the default text
    de: DiffExpr
    extras: tuple = ()           # (after label, label, values over genes): baselines, real cells
    extras_note: str = ""        # why there are none, or fewer than asked


@dataclass(frozen=True, eq=False)
class DiffExpr:
    """The effects of one condition (the DE tab): no p-values between generated cells."""

    label: str                   # the condition compared with its control
    frame: Any                   # pandas DataFrame with plain column names (the CSV saved)
    view: Any = None             # app.effect_table.EffectView: columns, plot, evidence, notes


@dataclass(frozen=True, eq=False)
class Embedding:
    """The UMAP of generated (and real) cells: one row of ``meta`` per point of ``coords``."""

    coords: Any                  # (n, 2) float array
    meta: Any                    # DataFrame: source, condition, cell type
    parts: Mapping[str, Any]     # name -> AnnData, in the order of the rows
    note: str = ""               # which real cells are shown, and why (the UMAP status line)

    @property
    def n_generated(self) -> int:
        return int((self.meta["source"] == "generated").sum())

    @property
    def n_real(self) -> int:
        return len(self.meta) - self.n_generated
