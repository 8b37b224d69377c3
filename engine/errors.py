"""Errors the engine raises. Every message is meant for a biologist to read.

Each error names the file, column or value at fault. The GUI shows ``str(err)``; the CLI prints it
and exits with a non-zero status. Never raise a bare ``ValueError`` across the engine's public API.
"""

from __future__ import annotations


class PerturbStudioError(Exception):
    """Base class: something the user can fix (bad file, unknown value, ...)."""


class DataError(PerturbStudioError):
    """A data file cannot be read or does not contain what is needed."""


class SchemaError(DataError):
    """The mapping of ``obs`` columns to roles is wrong for this dataset."""


class ConditionError(PerturbStudioError):
    """A requested condition is outside what the model knows."""


class ModelError(PerturbStudioError):
    """A model folder is missing, corrupt or incompatible."""


class ResourceError(PerturbStudioError):
    """A request would exceed the memory or disk available."""


class Cancelled(PerturbStudioError):
    """The caller asked the running job to stop; nothing was written."""
