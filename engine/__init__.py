"""Perturb Studio engine: headless data loading, models, training, generation and evaluation.

Public names are loaded lazily (PEP 562) so that ``import engine`` is cheap: torch, anndata and
scanpy are imported only when a name that needs them is first used. See docs/ENGINE_API.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # errors and progress
    "PerturbStudioError": "errors", "DataError": "errors", "SchemaError": "errors",
    "ConditionError": "errors", "ModelError": "errors", "ResourceError": "errors",
    "Cancelled": "errors", "Progress": "progress",
    # conditions
    "Condition": "conditions.spec", "Perturbation": "conditions.spec",
    "ConditionSpace": "conditions.spec",
    # data
    "read_dataset": "data.io", "get_counts": "data.io", "summarize_dataset": "data.io",
    "DatasetSummary": "data.io", "ColumnSummary": "data.io",
    "open_dataset": "data.stream", "BackedDataset": "data.stream",
    "Schema": "data.schema", "SchemaIssue": "data.schema", "guess_schema": "data.schema",
    "validate_schema": "data.schema",
    "write_h5ad": "export", "write_csv": "export",
    # models
    "PerturbModel": "model", "GeneMapping": "model",
    "list_models": "registry", "import_model": "install", "ModelInfo": "registry",
    "user_models_dir": "registry", "shipped_models_dir": "registry",
    "train_model": "train", "device_info": "device", "broken_models": "registry",
    "ModelConfig": "config", "BACKBONE_NAMES": "config", "OBJECTIVE_NAMES": "config",
    # analysis and evaluation
    "differential_expression": "analysis", "top_changed_genes": "analysis",
    "embed_umap": "analysis", "evaluate": "evaluate", "EvalResult": "evaluate",
    # predicted effects with their uncertainty, baseline and evidence
    "predict_effects": "effects", "effects_from_cells": "effects", "real_effect": "effects",
    "EffectResult": "effects", "Evidence": "effects", "RealEffect": "effects",
    "coverage": "effects", "predict_effects_many": "effects", "effects_from_perturbed": "effects",
    "train_and_assess": "assess",
    # pathway tokens (models with the pathway-transformer backbone)
    "pathway_token_changes": "pathway_tokens", "PathwayChanges": "pathway_tokens",
    "BACKBONE_SUMMARIES": "config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
