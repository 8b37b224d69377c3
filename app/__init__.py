"""Perturb Studio desktop application (PySide6 + pyqtgraph) over the headless ``engine``.

Nothing heavy is imported here: the window must appear fast. torch, anndata and scanpy are
imported inside functions, on worker threads, when a job first needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"
APP_NAME = "Perturb Studio"
ORG_NAME = "PerturbStudio"
