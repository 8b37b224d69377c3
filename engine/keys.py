"""The names Perturb Studio writes into and reads from AnnData objects, in one place.

Like scvi-tools' ``REGISTRY_KEYS``: every ``obs`` column, ``layers`` entry and ``uns`` key the
engine writes on generated cells (and the app reads back) is named here once, so a rename is one
edit and a typo is an ``AttributeError`` instead of a silent ``KeyError`` later. The values are
part of the file format users see (h5ad / CSV columns), so they do not change lightly.

This module imports nothing; it is the lowest layer of the engine with :mod:`engine.errors`.
"""

from __future__ import annotations

from typing import Final


class ObsKeys:
    """``obs`` columns of generated cells (one row per cell)."""

    CONDITION: Final = "condition"              # the condition's label, e.g. "T | A+B (CRISPRa)"
    CELL_TYPE: Final = "cell_type"
    PERTURBATION: Final = "perturbation"        # "A", "A+B" or "control"
    PERTURBATION_TYPE: Final = "perturbation_type"   # "CRISPRa", "CRISPRa+CRISPRi", ...
    DOSE: Final = "dose"                        # "1", "1+0.5", "" without dose
    IS_CONTROL: Final = "is_control"
    SOURCE_CELL: Final = "source_cell"          # perturb mode: the input cell it came from
    MEMBER: Final = "member"                    # the ensemble member that generated the cell

    #: The condition columns written for every generated cell, in this order (context levels
    #: follow as their own columns, then ``is_control``).
    CONDITION_COLUMNS: Final = (CONDITION, CELL_TYPE, PERTURBATION, PERTURBATION_TYPE, DOSE)


class LayerKeys:
    """``layers`` entries."""

    COUNTS: Final = "counts"                    # raw integer counts (cells x genes)


class UnsKeys:
    """``uns`` entries."""

    PROVENANCE: Final = "perturb_studio"        # how the cells were made (model, seed, ...)


OBS = ObsKeys
LAYERS = LayerKeys
UNS = UnsKeys

__all__ = ["OBS", "LAYERS", "UNS", "ObsKeys", "LayerKeys", "UnsKeys"]
