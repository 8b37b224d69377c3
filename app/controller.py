"""The app's controller: every job the user starts, and the session state it changes.

The window turns clicks into calls here (with the typed requests of :mod:`app.messages`); the
controller runs the engine on worker threads (:class:`app.workers.JobRunner`), puts what comes
back into the :class:`app.session.Session`, and says what happened through its signals. It
touches no widget: the window shows errors, messages and pages when these signals fire, and its
pages follow the session's events.

At most one *foreground* job runs at a time (load, generate, perturb, train): it owns the run
bar and can be cancelled. Listing, loading and importing models, the analysis, the UMAP and the
exports run beside it in their own slots; starting a job in a busy slot cancels the old one.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from . import settings as cfg
from .controller_sessions import SessionJobsMixin
from .experiment import Experiment
from .messages import (
    Analysis,
    DiffExpr,
    Embedding,
    GenerateRequest,
    LoadedDataset,
    LoadedModel,
    ModelList,
    PerturbRequest,
    RunOutput,
    SaveError,
    TrainRequest,
)
from .paths import path_inside, safe_filename
from .session import Session
from .umap_table import choose_real_cells, umap_parts
from .workers import JobRunner, warm_imports

log = logging.getLogger(__name__)

ERROR_TITLE = "Something went wrong"
#: Baselines and real effects are added to the heatmap for at most this many conditions.
MAX_EXTRA_CONDITIONS = 8
DEVICE_KINDS = {"cuda": "GPU", "mps": "GPU (Apple)", "cpu": "CPU"}


class Controller(SessionJobsMixin, QObject):
    # what happened (the window re-emits these for tests and scripts)
    dataset_loaded = Signal()
    models_listed = Signal()
    model_loaded = Signal()
    generation_finished = Signal()
    generation_cancelled = Signal()
    heatmap_updated = Signal()
    de_updated = Signal()
    umap_updated = Signal()
    training_finished = Signal()
    exported = Signal(str)                 # the written file
    # what to show
    error = Signal(str, str, str)          # message, details, title
    status = Signal(str, int)              # status-bar message, milliseconds
    show_page = Signal(str)                # page key (app.main_window.PAGES)
    fg_started = Signal(str)               # the foreground job started: run-bar text
    fg_progress = Signal(object)           # engine.progress.Progress
    fg_cancelling = Signal()               # Cancel was pressed
    fg_ended = Signal(str)                 # the foreground job ended: run-bar text
    dataset_loading = Signal(str)          # path
    dataset_failed = Signal(str, str)      # path, message
    dataset_kept = Signal()                # a load was cancelled: the dataset before stays
    model_loading = Signal(object)         # ModelInfo
    model_failed = Signal(object, str)     # ModelInfo, message
    models_message = Signal(str, bool)     # text for the Models page, is an error
    umap_status = Signal(str)
    train_progress = Signal(object)        # engine.progress.Progress of a training run
    view_ready = Signal(str, object)       # app.views kind, ViewResult
    view_failed = Signal(str, str)         # kind, message
    umap_scores_ready = Signal(object, object)   # GeneSet, scores per UMAP point
    session_saved = Signal(str)            # folder
    session_opened = Signal(object)        # app.session_io.SessionManifest

    def __init__(self, session: Session | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session if session is not None else Session()
        self.jobs = JobRunner(self)
        self._fg_t0 = 0.0

    def _error(self, message: str, details: str = "", title: str = ERROR_TITLE) -> None:
        self.error.emit(message, details, title)

    # -- the foreground job ----------------------------------------------------------------------
    def _start_fg(self, slot: str, text: str, fn, *, on_finished, on_cancelled=None,
                  on_progress=None, on_failed=None) -> bool:
        """Start the foreground job; False (and a message) when another one is running (a new
        load replaces a load)."""
        busy = self.session.busy
        if busy is not None and self.jobs.running(busy) and (busy != slot or slot != "load"):
            self._error("Another job is still running. Wait for it or press Cancel.", title="Busy")
            return False
        self._fg_t0 = time.perf_counter()
        self.fg_started.emit(text)
        self.session.set_busy(slot)

        def progress(p):
            self.fg_progress.emit(p)
            if on_progress is not None:
                on_progress(p)

        def finished(result):
            self._fg_end(f"{text.rstrip('…')}: done in {time.perf_counter() - self._fg_t0:.1f} s.")
            on_finished(result)

        def cancelled():
            self._fg_end("Cancelled. Nothing was written.")
            if on_cancelled is not None:
                on_cancelled()

        def failed(msg, details):
            self._fg_end(f"{text.rstrip('…')}: failed (see the message).")
            if on_failed is not None:
                on_failed(msg)
            self._error(msg, details)

        self.jobs.start(slot, fn, name=text, on_progress=progress, on_finished=finished,
                        on_failed=failed, on_cancelled=cancelled)
        return True

    def _fg_end(self, text: str) -> None:
        self.session.set_busy(None)
        self.fg_ended.emit(text)

    def cancel_running(self) -> None:
        """Cancel the foreground job, or else the UMAP."""
        if self.session.busy is not None:
            self.jobs.cancel(self.session.busy)
            self.fg_cancelling.emit()
        else:
            self.jobs.cancel("umap")

    def shutdown(self) -> None:
        self.jobs.shutdown()

    # -- data ------------------------------------------------------------------------------------
    def load_dataset(self, path: str, *, show: bool = True) -> None:
        """Load a dataset on the foreground worker (``show``: go to the Data page)."""
        path = str(path)
        if not Path(path).exists():
            msg = f"The file {path} does not exist (was it moved or deleted?)."
            self.dataset_failed.emit(path, msg)
            self._error(msg)
            return
        if show:
            self.show_page.emit("data")

        def fn(progress, cancel):
            import engine

            # a large h5ad opens backed: summary and roles from obs, counts stay on disk
            opened = engine.open_dataset(path, progress=progress)
            if cancel.is_set():
                return None
            return LoadedDataset(opened.adata, opened.summary, opened.schema, opened.backed)

        # a failed or cancelled load leaves the dataset loaded before in use, and says so
        if self._start_fg("load", f"Loading {Path(path).name}…", fn,
                          on_finished=lambda r: self._dataset_ready(path, r),
                          on_failed=lambda m: self.dataset_failed.emit(path, m),
                          on_cancelled=self.dataset_kept.emit):
            self.dataset_loading.emit(path)

    def _dataset_ready(self, path: str, loaded: LoadedDataset) -> None:
        cfg.add_recent_file(path)
        self.session.set_dataset(path, loaded)   # the Data page then reports the schema
        backed = getattr(loaded, "backed", None) is not None
        a = loaded.summary if backed else loaded.adata
        n_obs, n_vars = (a.n_cells, a.n_genes) if backed else (a.n_obs, a.n_vars)
        extra = " (opened from disk; views use a sample of the cells)" if backed else ""
        self.status.emit(f"Loaded {n_obs:,} cells × {n_vars:,} genes from {Path(path).name}"
                         f"{extra}", 8000)
        self.dataset_loaded.emit()

    def set_schema(self, schema, ok: bool) -> None:
        self.session.set_schema(schema, ok)

    # -- models ----------------------------------------------------------------------------------
    def refresh_models(self, select: str | None = None, *, then=None) -> None:
        """List the models (and the folders that cannot be used); ``then()`` runs once they are
        shown. With no model in use, the last one used is loaded again."""
        def fn(progress, cancel):
            import engine
            from engine import registry

            infos = engine.list_models()
            broken = []
            lister = getattr(registry, "broken_models", None)  # folders list_models skipped
            if lister is not None:
                try:
                    broken = [(Path(p), str(why)) for p, why in lister()]
                except Exception:  # noqa: BLE001 - the good models are still listed
                    log.exception("could not list the broken model folders")
            return ModelList(tuple(infos), tuple(broken))

        def done(found: ModelList):
            s = self.session
            last = select or s.in_use_name() or cfg.get("last_model")
            s.set_models(ModelList(found.infos, found.broken, last))
            self.models_listed.emit()
            if then is not None:
                then()
            if s.model is None and last and select is None:
                info = next((i for i in found.infos if i.name == last), None)
                if info is not None:
                    self.use_model(info)

        def failed(m, d):
            self.models_message.emit(f"Could not list the models: {m}", True)
            self._error(m, d)

        self.jobs.start("models", fn, on_finished=done, on_failed=failed)

    def use_model(self, info) -> None:
        self.model_loading.emit(info)

        def fn(progress, cancel):
            import engine

            model = engine.PerturbModel.load(info.path)
            warm_imports()
            if os.environ.get("PERTURB_STUDIO_UMAP_IN_THREAD") != "1":
                from .embed_process import server

                server().warm()  # start the UMAP helper process and compile UMAP there now
            try:
                dev = engine.device_info(model.device)
            except Exception:  # noqa: BLE001 - the model still works on its own device
                dev = {"kind": str(model.device), "name": str(model.device), "torch": ""}
            return LoadedModel(model, dev)

        def done(loaded: LoadedModel):
            cfg.put("last_model", info.name)
            kind = DEVICE_KINDS.get(loaded.device["kind"], loaded.device["kind"])
            self.session.set_model(loaded.model, info,
                                   f"Device: {kind} — {loaded.device['name']}")
            self.model_loaded.emit()

        def failed(m, d):
            self.model_failed.emit(info, m)
            self._error(m, d)

        self.jobs.start("model", fn, on_finished=done, on_failed=failed)

    def import_model(self, folder: str, name: str | None = None) -> None:
        """Copy a model folder into the user's models (the engine checks it and the name and
        refuses links, odd files and unsafe names with a ModelError, shown here)."""
        def fn(progress, cancel):
            import engine

            return engine.import_model(folder, name=name or None)

        def done(info):
            self.models_message.emit(f"Imported {info.name} from {folder}.", False)
            self.status.emit(f"Imported model {info.name}", 8000)
            self.refresh_models(info.name)

        def failed(m, d):
            self.models_message.emit(f"Could not import {folder}: {m}", True)
            self._error(m, d, "Import failed")

        self.show_page.emit("models")  # the outcome is said on the Models page
        self.models_message.emit(f"Checking {folder}…", False)
        self.jobs.start("import", fn, on_finished=done, on_failed=failed)

    # -- generation ------------------------------------------------------------------------------
    def autosave_path(self, kind: str) -> Path | None:
        """Where a finished experiment is saved automatically: a file in
        ``<output folder>/perturb-studio`` whose name is built from the model's name made safe
        (a name such as ``../x`` cannot move it elsewhere). None when autosave is off."""
        if not self.session.autosave:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = self.session.model
        name = safe_filename(model.name if model is not None else "model")
        folder = cfg.output_dir() / "perturb-studio"
        try:
            return path_inside(folder, f"{stamp}_{name}_{safe_filename(kind)}.h5ad")
        except ValueError as e:  # not reachable with a safe name; never write elsewhere
            self._error(f"The result will not be saved automatically: {e}.")
            return None

    def generate(self, req: GenerateRequest) -> None:
        if self.session.model is None:
            self._error("Choose a model on the Models page first.", title="No model")
            return
        model, out = self.session.model, self.autosave_path("generated")

        def fn(progress, cancel):
            from engine.progress import check_cancel

            adata = model.generate_many(list(req.conditions), req.n, include_control=True,
                                        seed=req.seed, steps=req.steps, guidance=req.guidance,
                                        progress=progress, cancel=cancel)
            check_cancel(cancel)
            return autosave(adata, out)

        def done(r: RunOutput):
            self._show_experiment(Experiment.from_generated(
                r.adata, model_name=model.name, saved_to=r.saved_to, model=model,
                conditions=_checked(model, req.conditions)), r.save_error)

        self._start_fg("run", f"Generating {req.n_total:,} cells…", fn, on_finished=done,
                       on_cancelled=self.generation_cancelled.emit)

    def perturb(self, req: PerturbRequest) -> None:
        s = self.session
        if s.model is None or s.adata is None:
            return
        model, out = s.model, self.autosave_path("perturbed")
        cells = s.adata[req.cell_index].copy()

        def fn(progress, cancel):
            from engine.progress import check_cancel

            adata = model.perturb(cells, req.condition, seed=req.seed, steps=req.steps,
                                  progress=progress, cancel=cancel)
            check_cancel(cancel)
            return autosave(adata, out)

        def done(r: RunOutput):
            self._show_experiment(Experiment.from_perturbed(
                r.adata, cells, model_name=model.name, saved_to=r.saved_to, model=model,
                conditions=_checked(model, [req.condition])), r.save_error)

        self._start_fg("run", f"Perturbing {cells.n_obs:,} cells…", fn, on_finished=done,
                       on_cancelled=self.generation_cancelled.emit)

    def _show_experiment(self, exp: Experiment, save_error: SaveError | None = None) -> None:
        self.session.set_experiment(exp)
        self.generation_finished.emit()
        self.analyse()
        self.compute_umap()
        self.autosave_session()
        if save_error:
            self._error("The cells were generated, but saving them automatically failed: "
                        f"{save_error.message}. Use File > Save cells to save them elsewhere.",
                        save_error.details)

    # -- analysis --------------------------------------------------------------------------------
    def _real_data(self):
        """The open dataset, its column roles and its file name (None, None, "" when no dataset
        is open or its roles are not set)."""
        s = self.session
        if s.adata is None or s.schema is None or not s.schema_ok:
            return None, None, ""
        return s.adata, s.schema, Path(s.data_path or "").name

    def analyse(self) -> None:
        """The heatmap of the genes that change most (with each condition's baseline and real
        effect as extra rows), and the effects of the first condition."""
        exp = self.session.experiment
        if exp is None:
            return
        dataset, schema, data_name = self._real_data()
        key = id(dataset)

        def fn(progress, cancel):
            import engine

            from .effect_table import compute_effects, effect_view, heatmap_extras

            groups = {k: exp.group(k) for k in exp.labels}
            controls = {k: exp.control(k) for k in exp.labels}
            genes, mat = engine.top_changed_genes(groups, controls, n=30)
            first = exp.labels[0]
            effects, extras_note = {}, ""
            if exp.mode == "denovo" and not exp.only_controls and exp.conditions:
                labels = [k for k in exp.labels if k in exp.conditions]
                if len(labels) > MAX_EXTRA_CONDITIONS:
                    extras_note = (f"Baselines and real cells are added for at most "
                                   f"{MAX_EXTRA_CONDITIONS} conditions ({len(labels)} here).")
                    labels = [k for k in labels if k == first]
                for k in labels:
                    try:
                        effects[k] = compute_effects(exp.model, exp, k, dataset, schema)
                    except engine.PerturbStudioError:   # said on the DE tab when shown
                        log.exception("no effects for %s", k)
            view = effect_view(exp.model, exp, first, cached=effects.get(first),
                               data_name=data_name)
            extras = heatmap_extras(genes, {k: v[0] for k, v in effects.items()},
                                    {k: v[1] for k, v in effects.items()})
            if effects and not extras and not extras_note:
                extras_note = ("No baseline and no real cells for these conditions: nothing "
                               "to add.")
            return Analysis(genes, mat, exp.labels, heatmap_note(exp),
                            DiffExpr(first, view.frame, view), tuple(extras), extras_note), effects

        def done(result):
            a, effects = result
            if exp is not self.session.experiment:
                return
            for k, v in effects.items():
                exp.effects[(k, key)] = v
            self.session.set_analysis(a)
            self.heatmap_updated.emit()
            self.session.set_de(a.de)
            self.de_updated.emit()

        self.jobs.start("analyse", fn, on_finished=done,
                        on_failed=lambda m, d: self._error(m, d))

    def compute_de(self, label: str) -> None:
        """The effects of ``label`` (the DE tab), on a worker."""
        exp = self.session.experiment
        if exp is None or label not in exp.groups:
            return
        dataset, schema, data_name = self._real_data()
        key = (label, id(dataset))
        cached = exp.effects.get(key)

        def fn(progress, cancel):
            from .effect_table import effect_view

            view = effect_view(exp.model, exp, label, dataset=dataset, schema=schema,
                               cached=cached, data_name=data_name)
            return DiffExpr(label, view.frame, view)

        def done(de: DiffExpr):
            if exp is self.session.experiment:
                if de.view is not None and de.view.result is not None:
                    exp.effects[key] = (de.view.result, de.view.real, "")
                self.session.set_de(de)
                self.de_updated.emit()

        self.jobs.start("de", fn, on_finished=done, on_failed=lambda m, d: self._error(m, d))

    def compute_umap(self) -> None:
        """Embed the generated cells with real ones, in the UMAP helper process
        (app.embed_process) unless PERTURB_STUDIO_UMAP_IN_THREAD=1: the open dataset when its
        genes match the model's, else the model's own reference cells (app.umap_table)."""
        s = self.session
        exp = s.experiment
        if exp is None:
            return
        real, schema = s.adata, s.schema
        data_name = Path(s.data_path or "").name
        if exp.mode == "perturb" and real is None:
            real = exp.source  # the whole dataset is shown when open: where should cells go?
            data_name = "your cells"

        def fn(progress, cancel):
            choice = choose_real_cells(exp.model, real, schema, data_name=data_name)
            parts, meta = umap_parts(exp, choice.adata, choice, real_source=(
                "real (model's reference)" if choice.kind == "reference" else "real"))
            if os.environ.get("PERTURB_STUDIO_UMAP_IN_THREAD") == "1":
                import engine

                coords, _labels = engine.embed_umap(parts, progress=progress, cancel=cancel)
            else:
                from .embed_process import server

                coords, _labels = server().embed(parts, progress=progress, cancel=cancel)
            n_gen = int((meta["source"] == "generated").sum())
            return Embedding(coords, meta, parts, choice.status(n_gen, len(meta) - n_gen))
        def prog(p):
            self.umap_status.emit(f"Computing the UMAP in the background: {p.phase} "
                                  f"({int(100 * p.fraction)}%)…")

        def done(e: Embedding):
            if exp is not self.session.experiment:
                return
            self.session.set_embedding(e)
            self.umap_updated.emit()

        self.umap_status.emit("Computing the UMAP in the background…")
        self.jobs.start("umap", fn, on_progress=prog, on_finished=done,
                        on_failed=lambda m, d: self.umap_status.emit(f"UMAP failed: {m}"),
                        on_cancelled=lambda: self.umap_status.emit("UMAP cancelled."))

    # -- training --------------------------------------------------------------------------------
    def train(self, req: TrainRequest) -> None:
        s = self.session
        if s.adata is None or s.schema is None:
            return
        # a backed (large) dataset trains on all its cells, streamed from disk
        adata = s.backed if getattr(s, "backed", None) is not None else s.adata
        schema, data_path = s.schema, s.data_path

        def fn(progress, cancel):
            import engine

            out_dir = engine.user_models_dir() / req.name
            if out_dir.exists():
                raise engine.PerturbStudioError(
                    f"a model called {req.name!r} already exists in {out_dir.parent}; "
                    "choose another name")
            # trained on 80% of the cells of every condition, judged on the other 20% against
            # the baselines: the card says how far to trust it (engine.assess)
            engine.train_and_assess(adata, schema, out_dir, backbone=req.backbone,
                                    seed=req.seed, name=req.name, progress=progress,
                                    cancel=cancel,
                                    data_file=Path(data_path).name if data_path else None,
                                    **dict(req.overrides))
            return req.name

        def listed():
            self.show_page.emit("models")
            self.training_finished.emit()

        def done(name: str):
            self.status.emit(f"Model {name} trained and added to your models", 10000)
            self.refresh_models(select=name, then=listed)

        self._start_fg("run", f"Training {req.name}…", fn, on_finished=done,
                       on_progress=self.train_progress.emit)

    # -- export ----------------------------------------------------------------------------------
    def export_cells(self, kind: str, path: str) -> None:
        """Write the experiment's cells to ``path`` on a worker ('h5ad' or 'csv' of counts)."""
        exp = self.session.experiment
        if exp is None:
            return
        adata, target = exp.adata, path

        def fn(progress, cancel):
            import engine

            Path(target).parent.mkdir(parents=True, exist_ok=True)
            if kind == "h5ad":
                engine.write_h5ad(adata, target)
            else:
                engine.write_csv(adata, target)
            return target

        self.jobs.start("export", fn, on_finished=self.note_exported,
                        on_failed=lambda m, d: self._error(m, d))

    def export_table(self, df, path: str) -> str | None:
        """Write a table (the DE table) as CSV, atomically; the path, or None (and a message)."""
        from engine.errors import PerturbStudioError
        from engine.export import atomic_path

        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".tmp.csv") as tmp:
                df.to_csv(tmp, index=False)
        except (OSError, PerturbStudioError) as e:
            self._error(f"Could not write {path}: {e}", traceback.format_exc())
            return None
        return self.note_exported(path)

    def note_exported(self, path: str) -> str:
        """A file was saved: its folder is where the next Save dialog opens (the output folder
        of automatic saves stays as it is: File > Output folder), and the user is told."""
        cfg.put("last_save_dir", str(Path(path).parent))
        self.status.emit(f"Saved {path}", 8000)
        self.exported.emit(path)
        return path


def _checked(model, conditions) -> list:
    """The conditions as the model completes them (their labels are those of the cells)."""
    from engine.errors import PerturbStudioError

    out = []
    for c in conditions:
        try:
            out.append(model.check_condition(c))
        except PerturbStudioError:
            out.append(c)
    return out


def heatmap_note(exp: Experiment) -> str:
    """What the heatmap compares when nothing was perturbed ("" otherwise)."""
    if exp.only_controls and len(exp.labels) > 1:
        return ("No perturbation was generated, so each population is compared with all the "
                "other generated cells: these are its marker genes.")
    if exp.only_controls:
        return ("Only one unperturbed population was generated: there is nothing to compare it "
                "with. Add a perturbation or another cell type on the Compose page.")
    return ""


def autosave(adata, out: Path | None) -> RunOutput:
    """Write ``adata`` to ``out`` (atomically; ``None``: not saved). A failed save never loses
    the generated cells: it comes back as ``save_error``."""
    if out is None:
        return RunOutput(adata)
    import engine

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        engine.write_h5ad(adata, out)
    except (OSError, engine.PerturbStudioError) as e:
        return RunOutput(adata, None, SaveError(str(e), traceback.format_exc()))
    return RunOutput(adata, str(out))
