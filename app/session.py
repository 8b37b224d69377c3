"""What the user has open: the dataset and its column roles, the models, the model in use, the
latest experiment and its analysis. A plain Python object without Qt (like napari's
``ViewerModel``): the controller changes it, the window's pages observe it through its events.

Each ``set_*`` method changes the state, then emits one event (no arguments: an observer reads
the session). Everything runs in the GUI thread: jobs report back there (app.workers), so an
event never needs a queued connection and the observers have run when ``set_*`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .messages import Analysis, DiffExpr, Embedding, LoadedDataset, ModelList

log = logging.getLogger(__name__)


class Event:
    """A list of callbacks: ``connect(fn)``, ``disconnect(fn)``, ``emit()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[[], Any]] = []

    def connect(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[], Any]) -> None:
        self._callbacks.remove(callback)

    def emit(self) -> None:
        for cb in list(self._callbacks):
            cb()

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {len(self._callbacks)} callbacks)"


class SessionEvents:
    def __init__(self) -> None:
        self.dataset = Event("dataset")        # adata, data_path, summary, guessed_schema
        self.schema = Event("schema")          # schema, schema_ok
        self.models = Event("models")          # models
        self.model = Event("model")            # model, model_info, device_text
        self.experiment = Event("experiment")  # experiment (analysis, de, embedding cleared)
        self.analysis = Event("analysis")      # analysis (heatmap)
        self.de = Event("de")                  # de (the DE table shown)
        self.embedding = Event("embedding")    # embedding (UMAP)
        self.busy = Event("busy")              # busy: the foreground job's slot, or None


class Session:
    def __init__(self) -> None:
        self.events = SessionEvents()
        # data
        self.adata = None
        self.data_path: str | None = None
        self.summary = None
        self.guessed_schema = None             # what engine.guess_schema proposed at opening
        self.schema = None                     # the column roles in use (the Data page's form)
        self.schema_ok = False
        # models
        self.models = ModelList()
        self.model = None
        self.model_info = None
        self.device_text: str | None = None
        # the latest experiment and what was computed from it
        self.experiment = None
        self.analysis: Analysis | None = None
        self.de: DiffExpr | None = None
        self.embedding: Embedding | None = None
        # jobs and options
        self.busy: str | None = None           # slot of the foreground job (the run bar's)
        self.autosave = True                   # save each finished experiment as h5ad

    # -- changes ---------------------------------------------------------------------------------
    def set_dataset(self, path: str, loaded: LoadedDataset) -> None:
        self.adata, self.data_path, self.summary = loaded.adata, path, loaded.summary
        self.guessed_schema = loaded.schema
        self.events.dataset.emit()

    def set_schema(self, schema, ok: bool) -> None:
        self.schema, self.schema_ok = schema, bool(ok)
        self.events.schema.emit()

    def set_models(self, models: ModelList) -> None:
        self.models = models
        self.events.models.emit()

    def set_model(self, model, info, device_text: str | None) -> None:
        self.model, self.model_info, self.device_text = model, info, device_text
        self.events.model.emit()

    def set_experiment(self, experiment) -> None:
        self.experiment = experiment
        self.analysis = self.de = self.embedding = None
        self.events.experiment.emit()

    def set_analysis(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.events.analysis.emit()

    def set_de(self, de: DiffExpr) -> None:
        self.de = de
        self.events.de.emit()

    def set_embedding(self, embedding: Embedding) -> None:
        self.embedding = embedding
        self.events.embedding.emit()

    def set_busy(self, slot: str | None) -> None:
        if slot != self.busy:
            self.busy = slot
            self.events.busy.emit()

    # -- questions -------------------------------------------------------------------------------
    @property
    def last_saved(self) -> str | None:
        """Where the latest experiment was saved automatically (None: not saved)."""
        return self.experiment.saved_to if self.experiment is not None else None

    def in_use_name(self) -> str | None:
        return self.model_info.name if self.model_info is not None else None
