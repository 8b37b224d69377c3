"""What the user has open: the dataset and its column roles, the models, the model in use, the
latest experiment and its analysis. A plain Python object without Qt (like napari's
``ViewerModel``): the controller changes it, the window's pages observe it through its events.

Each ``set_*`` method changes the state, then emits one event (no arguments: an observer reads
the session). Everything runs in the GUI thread: jobs report back there (app.workers), so an
event never needs a queued connection and the observers have run when ``set_*`` returns.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
        self.history = Event("history")        # history (entries added, renamed, removed)


_ids = itertools.count(1)


@dataclass(eq=False)
class HistoryEntry:
    """One experiment of the session's history: its name (the user may rename it), the
    experiment, when it was made, and why it is read-only ("" when it is not)."""

    experiment: Any
    name: str = ""
    created: float = field(default_factory=time.time)
    read_only: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    file: str | None = None          # where a saved session keeps its cells

    def __post_init__(self) -> None:
        if not self.name:
            self.name = default_name(self.experiment)

    @property
    def n_cells(self) -> int:
        return int(self.experiment.adata.n_obs)

    def subtitle(self) -> str:
        stamp = time.strftime("%H:%M", time.localtime(self.created))
        return f"{self.n_cells:,} cells · {self.experiment.model_name} · {stamp}"

    def tooltip(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))
        conds = ", ".join(self.experiment.labels[:6])
        more = f" and {len(self.experiment.labels) - 6} more" if len(
            self.experiment.labels) > 6 else ""
        ro = f"\nRead-only: {self.read_only}" if self.read_only else ""
        return (f"{self.name}\nmodel {self.experiment.model_name} · {self.n_cells:,} cells · "
                f"{when}\nconditions: {conds}{more}{ro}")


def default_name(exp) -> str:
    """A short name from the conditions: 'CD14+Mono | stimulated (+1 more)'."""
    labels = list(getattr(exp, "labels", []))
    if not labels:
        return "experiment"
    head = labels[0] if len(labels[0]) <= 40 else labels[0][:39] + "…"
    prefix = "perturbed: " if getattr(exp, "mode", "") == "perturb" else ""
    return prefix + head + (f" (+{len(labels) - 1} more)" if len(labels) > 1 else "")


class Session:
    def __init__(self) -> None:
        self.events = SessionEvents()
        # data
        self.adata = None
        self.backed = None                     # engine.BackedDataset of a large h5ad
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
        # every experiment of this session, oldest first
        self.history: list[HistoryEntry] = []
        self.session_dir: str | None = None    # the folder of the session saved or opened

    # -- changes ---------------------------------------------------------------------------------
    def set_dataset(self, path: str, loaded: LoadedDataset) -> None:
        self.adata, self.data_path, self.summary = loaded.adata, path, loaded.summary
        self.backed = getattr(loaded, "backed", None)    # the whole file, for training
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

    def set_experiment(self, experiment, *, name: str = "", read_only: str = "",
                       created: float | None = None) -> None:
        """Show ``experiment``; a new one is added to the history."""
        if experiment is not None and self.entry_of(experiment) is None:
            e = HistoryEntry(experiment, name, read_only=read_only)
            if created is not None:
                e.created = created
            self.history.append(e)
            self.events.history.emit()
        self.experiment = experiment
        self.analysis = self.de = self.embedding = None
        self.events.experiment.emit()

    def entry_of(self, experiment) -> HistoryEntry | None:
        return next((e for e in self.history if e.experiment is experiment), None)

    def entry(self, entry_id: int) -> HistoryEntry | None:
        return next((e for e in self.history if e.id == entry_id), None)

    def show_entry(self, entry_id: int) -> None:
        e = self.entry(entry_id)
        if e is not None and e.experiment is not self.experiment:
            self.set_experiment(e.experiment)

    def rename_entry(self, entry_id: int, name: str) -> None:
        e = self.entry(entry_id)
        name = " ".join(str(name).split())[:120]
        if e is not None and name and name != e.name:
            e.name = name
            self.events.history.emit()

    def remove_entry(self, entry_id: int) -> None:
        """Drop an experiment from the history; when it was shown, the newest left is shown."""
        e = self.entry(entry_id)
        if e is None:
            return
        self.history.remove(e)
        self.events.history.emit()
        if e.experiment is self.experiment:
            self.set_experiment(self.history[-1].experiment if self.history else None)

    def clear_history(self) -> None:
        self.history = []
        self.events.history.emit()
        self.set_experiment(None)

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

    @property
    def current_entry(self) -> HistoryEntry | None:
        return self.entry_of(self.experiment) if self.experiment is not None else None

    def in_use_name(self) -> str | None:
        return self.model_info.name if self.model_info is not None else None
