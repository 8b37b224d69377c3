"""The controller's jobs for figure views, the history and sessions (a mixin of
app.controller.Controller: it uses the controller's session, job runner and signals)."""

from __future__ import annotations

import logging
from pathlib import Path

from . import settings as cfg
from .experiment import Experiment

log = logging.getLogger(__name__)


class SessionJobsMixin:
    # -- figure views ----------------------------------------------------------------------------
    def compute_view(self, kind: str, params: dict, *, dpi: int = 100) -> None:
        """The figure of an app.views kind for the shown experiment, built and rendered on a
        worker (one at a time: asking for another replaces it)."""
        exp = self.session.experiment
        if exp is None:
            return
        dataset, schema, _name = self._real_data()

        def fn(progress, cancel):
            from . import figures
            from .views import build_view

            p = dict(params)
            size = p.pop("_size", None)
            res = build_view(kind, exp, p, dataset=dataset, schema=schema)
            res.png = figures.render_png(res.figure, dpi=figures.screen_dpi(res.figure, size)
                                         if size else dpi)
            return res

        def done(res):
            if exp is self.session.experiment:
                self.view_ready.emit(kind, res)

        def failed(m, d):
            log.error("view %s failed: %s\n%s", kind, m, d)
            self.view_failed.emit(kind, f"Could not draw this view: {m}")

        self.jobs.start("view", fn, on_finished=done, on_failed=failed)

    def geneset_umap(self, gene_set) -> None:
        """Score every UMAP point for ``gene_set`` (on a worker)."""
        emb = self.session.embedding
        if emb is None:
            return

        def fn(progress, cancel):
            from .views import umap_scores

            return umap_scores(emb.parts, gene_set)

        def done(scores):
            if emb is self.session.embedding:
                self.umap_scores_ready.emit(gene_set, scores)

        self.jobs.start("umap-score", fn, on_finished=done,
                        on_failed=lambda m, d: self._error(m, d))

    # -- sessions --------------------------------------------------------------------------------
    def session_autosave_dir(self) -> Path:
        """Beside (not inside) the folder of autosaved cells, which holds files only."""
        return cfg.output_dir() / "perturb-studio-session"

    def save_session(self, folder: str, view: dict | None = None, *,
                     autosave: bool = False) -> None:
        """Write the history to ``folder`` (app.session_io) on a worker."""
        s = self.session
        entries = list(s.history)
        if not entries:
            if not autosave:
                self._error("There is nothing to save yet: generate cells first.",
                            title="Nothing to save")
            return
        data_path, schema = s.data_path, s.schema
        current = s.current_entry.id if s.current_entry is not None else None
        if autosave:   # the autosave folder keeps its own copies (never moves saved files)
            entries = [_AutosaveEntry(e) for e in entries]

        def fn(progress, cancel):
            from .session_io import save_session

            save_session(folder, entries, dataset_path=data_path, schema=schema,
                         current_id=current, view=view, prune=autosave)
            return folder

        def done(path):
            if autosave:
                for e in entries:
                    e.original.autosaved = e.file
                return
            s.session_dir = path
            self.status.emit(f"Session saved in {path}", 8000)
            self.session_saved.emit(path)

        self.jobs.start("session-autosave" if autosave else "session", fn, on_finished=done,
                        on_failed=lambda m, d: (log.error("session save: %s", m) if autosave
                                                else self._error(m, d)))

    def autosave_session(self) -> None:
        if self.session.autosave:
            self.save_session(str(self.session_autosave_dir()), autosave=True)

    def open_session(self, folder: str) -> None:
        """Read a session folder on a worker, then show its experiments (those whose model is
        missing or changed read-only)."""
        def fn(progress, cancel):
            import engine

            from .session_io import load_session

            def step(fraction: float) -> None:
                progress(engine.Progress(0.9 * fraction, "reading the cells"))

            m = load_session(folder, engine.list_models(), progress=step, cancel=cancel)
            models = {}
            for e in m.experiments:
                if not e.read_only and e.model_path and e.model_path not in models:
                    models[e.model_path] = engine.PerturbModel.load(e.model_path)
            return m, models

        def done(result):
            m, models = result
            self._session_ready(m, models)

        self._start_fg("run", f"Opening session {Path(folder).name}…", fn, on_finished=done)

    def _session_ready(self, m, models) -> None:
        import engine

        s = self.session
        s.history = []
        s.events.history.emit()
        shown = None
        for i, e in enumerate(m.experiments):
            model = models.get(e.model_path) if not e.read_only else None
            conds = []
            if model is not None:
                conds = _checked(model, [engine.Condition.from_dict(c) for c in e.conditions])
            if e.mode == "perturb" and e.source is not None:
                exp = Experiment.from_perturbed(e.adata, e.source, model_name=e.model_name,
                                                conditions=conds, model=model)
            else:
                exp = Experiment.from_generated(e.adata, model_name=e.model_name,
                                                conditions=conds, model=model)
            exp.read_only = e.read_only
            exp.saved_to = e.file          # the header says where the cells are kept
            s.set_experiment(exp, name=e.name, read_only=e.read_only, created=e.created)
            entry = s.entry_of(exp)
            if entry is not None:
                entry.file = e.file
            if i == m.current:
                shown = exp
        s.session_dir = m.folder
        if shown is not None and shown is not s.experiment:
            s.set_experiment(shown)
        self.session_opened.emit(m)
        if s.experiment is not None:
            self.analyse()
            self.compute_umap()
        n_ro = sum(1 for e in m.experiments if e.read_only)
        self.status.emit(f"Opened {len(m.experiments)} experiment(s) from {m.folder}"
                         + (f"; {n_ro} read-only" if n_ro else ""), 10000)

    def delete_entry(self, entry_id: int) -> None:
        """Drop an experiment from the history; when it was shown, the newest left is shown
        and analysed."""
        s = self.session
        before = s.experiment
        s.remove_entry(entry_id)
        if s.experiment is not None and s.experiment is not before:
            self.analyse()
            self.compute_umap()
        self.autosave_session()

    def show_entry(self, entry_id: int) -> None:
        """Look at an experiment of the history again."""
        s = self.session
        e = s.entry(entry_id)
        if e is None or e.experiment is s.experiment:
            return
        s.set_experiment(e.experiment)
        self.analyse()
        self.compute_umap()



def _checked(model, conditions) -> list:
    from .controller import _checked as checked

    return checked(model, conditions)


class _AutosaveEntry:
    """A history entry as the autosave writes it: its own file attribute, so autosaving never
    changes where the user's saved session keeps the cells."""

    def __init__(self, entry) -> None:
        self.original = entry
        self.experiment, self.name, self.created = entry.experiment, entry.name, entry.created
        self.read_only, self.id = entry.read_only, entry.id
        self.file = getattr(entry, "autosaved", None)


