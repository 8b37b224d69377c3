"""The main window: pages on the left, the current page in the middle, the run bar at the bottom.

The window is the view. What the user has open lives in a :class:`app.session.Session`; the
jobs that change it are started by the :class:`app.controller.Controller`. The window builds
the pages, turns clicks into controller calls (with the typed requests of :mod:`app.messages`),
keeps the pages in step with the session's events, and shows what the controller says (errors,
messages, the run bar). Menus and toolbar are in app.actions, dialogs in app.dialogs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from . import APP_NAME, dialogs
from . import settings as cfg
from .actions import build_actions
from .controller import Controller
from .panels.composer import ComposerPanel
from .panels.data import DataPanel
from .panels.models import ModelsPanel
from .panels.perturb import PerturbPanel
from .panels.results import ResultsPanel
from .panels.train import TrainPanel
from .paths import safe_filename
from .richtext import esc, plain
from .run_bar import RunBar
from .session import Session
from .window_sessions import SessionActionsMixin

log = logging.getLogger(__name__)

PAGES = [("data", "Data", "Open a dataset and map its columns"),
         ("models", "Models", "Choose a model and read its card"),
         ("compose", "Compose", "Compose conditions and generate cells"),
         ("perturb", "Perturb my cells", "Perturb the control cells of your dataset"),
         ("train", "Train", "Train a model on your dataset"),
         ("results", "Results", "Heatmap, UMAP and the effects with their uncertainty")]
PAGE_ROWS = {key: i for i, (key, _t, _tip) in enumerate(PAGES)}
DATA_SUFFIXES = (".h5ad", ".csv", ".tsv", ".txt", ".gz", ".h5", ".mtx")
icon_path = dialogs.icon_path


class MainWindow(SessionActionsMixin, QMainWindow):
    # signals the tests, the screenshot tour and the benchmarks wait on
    dataset_loaded = Signal()
    models_listed = Signal()
    model_loaded = Signal()
    generation_finished = Signal()
    generation_cancelled = Signal()
    heatmap_updated = Signal()
    de_updated = Signal()
    umap_updated = Signal()
    training_finished = Signal()
    error_shown = Signal(str)
    exported = Signal(str)
    view_updated = Signal(str)             # an app.views kind was drawn
    session_saved = Signal(str)
    session_opened = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        if icon_path().exists():
            self.setWindowIcon(QIcon(str(icon_path())))
        self.setAcceptDrops(True)
        self.session = Session()
        self.controller = Controller(self.session, self)
        self.last_error: str | None = None

        # pages
        self.data_page = DataPanel()
        self.models_page = ModelsPanel()
        self.compose_page = ComposerPanel()
        self.perturb_page = PerturbPanel()
        self.train_page = TrainPanel()
        self.results_page = ResultsPanel()
        self.pages = {"data": self.data_page, "models": self.models_page,
                      "compose": self.compose_page, "perturb": self.perturb_page,
                      "train": self.train_page, "results": self.results_page}
        self.stack = QStackedWidget()
        self.nav = QListWidget()
        self.nav.setIconSize(QSize(20, 20))
        self.nav.setMaximumWidth(210)
        self.nav.setMinimumWidth(150)
        self.nav.setToolTip("The steps of an experiment: click one, or press Ctrl+1 … Ctrl+6")
        self.nav.setStyleSheet("QListWidget { font-size: 11pt; } "
                               "QListWidget::item { padding: 8px 6px; }")
        for i, (key, title, tip) in enumerate(PAGES):
            item = QListWidgetItem(f"{i + 1}  {title}")
            item.setToolTip(f"{tip} (Ctrl+{i + 1})")
            self.nav.addItem(item)
            self.stack.addWidget(self.pages[key])
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        # wide enough for its longest step name ("4  Perturb my cells" was cut off, with a
        # horizontal scroll bar, in a 1035 px window)
        self.nav.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.nav.setMinimumWidth(max(150, self.nav.sizeHintForColumn(0) + 16))
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.nav)
        self.splitter.addWidget(self.stack)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([170, 1200])
        self.run_bar = RunBar()
        self.run_bar.cancel_clicked.connect(self.cancel_running)
        central = QWidget()
        v = QVBoxLayout(central)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(0)
        v.addWidget(self.splitter, 1)
        v.addWidget(self.run_bar)
        self.setCentralWidget(central)
        self.device_label = QLabel("Device: —")
        self.device_label.setToolTip("Where generation and training run")
        self.model_label = plain(QLabel("No model"))
        self.model_label.setToolTip("The model in use")
        self.statusBar().addPermanentWidget(self.model_label)
        self.statusBar().addPermanentWidget(self.device_label)

        build_actions(self, PAGES)
        self.act_autosave.toggled.connect(self._autosave_toggled)
        self._update_actions()
        self._wire_pages()
        self._observe_session()
        self._wire_controller()
        self._restore_settings()
        self.nav.setCurrentRow(0)
        QTimer.singleShot(0, self.refresh_models)

    # -- read-only views of the session (for scripts such as build_scripts/bench_app.py) --------
    @property
    def jobs(self):
        return self.controller.jobs

    @property
    def adata(self):
        return self.session.adata

    @property
    def model(self):
        return self.session.model

    @property
    def experiment(self):
        return self.session.experiment

    @property
    def device_text(self) -> str | None:
        return self.session.device_text

    # -- wiring ----------------------------------------------------------------------------------
    def _wire_pages(self) -> None:
        """What the pages ask for."""
        c = self.controller
        d = self.data_page
        d.open_requested.connect(self.open_dialog)
        d.open_folder_requested.connect(self.open_folder_dialog)
        d.open_path.connect(self.load_dataset)
        d.schema_changed.connect(lambda schema: c.set_schema(schema, self.data_page.schema_ok))
        self.models_page.model_chosen.connect(self.use_model)
        self.models_page.import_requested.connect(self.import_model_dialog)
        self.models_page.refresh_requested.connect(self.refresh_models)
        self.compose_page.generate_requested.connect(self._generate)
        self.perturb_page.perturb_requested.connect(c.perturb)
        self.train_page.train_requested.connect(c.train)
        r = self.results_page
        r.export_requested.connect(self.export)
        r.de_requested.connect(c.compute_de)
        r.view_requested.connect(lambda kind, p: c.compute_view(kind, p))
        r.geneset_umap_requested.connect(c.geneset_umap)
        r.history_selected.connect(c.show_entry)
        r.history_renamed.connect(self._rename_entry)
        r.history_deleted.connect(c.delete_entry)
        r.copy_command_requested.connect(self.copy_command)

    def _observe_session(self) -> None:
        """Keep the pages in step with the session."""
        ev = self.session.events
        ev.dataset.connect(self._dataset_changed)
        ev.schema.connect(self._context_changed)
        ev.models.connect(self._models_changed)
        ev.model.connect(self._model_changed)
        ev.experiment.connect(self._experiment_changed)
        ev.analysis.connect(self._analysis_changed)
        ev.de.connect(lambda: self.results_page.set_de(self.session.de))
        ev.embedding.connect(lambda: self.results_page.set_embedding(
            self.session.embedding, Path(self.session.data_path or "").name))
        ev.busy.connect(self._busy_changed)
        ev.history.connect(self._history_changed)
        ev.de.connect(self._restore_compare)

    def _generate(self, req) -> None:
        import time

        self._run_steps = getattr(req, "steps", None)
        self._run_t0 = time.perf_counter()
        self.controller.generate(req)

    def _note_finished_rate(self) -> None:
        """The run's own average speed, when no progress report recorded one (a short run
        can finish between two throttled reports). The steps come from the run's provenance:
        ``_run_steps`` is cleared when the job ends, and that signal can arrive first."""
        import time

        t0 = getattr(self, "_run_t0", None)
        exp = self.session.experiment
        if t0 is None or exp is None or getattr(exp, "adata", None) is None:
            return
        prov = exp.adata.uns.get("perturb_studio") or {}
        steps = prov.get("steps") if isinstance(prov, dict) else None
        if not steps:
            return
        self._run_t0 = None
        if cfg.get("generation_rate") in (None, "", "None"):
            dt = max(time.perf_counter() - t0, 1e-3)
            cfg.put("generation_rate", f"{exp.adata.n_obs / dt:.1f},{int(steps)}")

    def _note_rate(self, p) -> None:
        """Remember how fast this computer generates (for the composer's time estimate)."""
        steps = getattr(self, "_run_steps", None)
        if (self.session.busy == "run" and steps and p.rate and p.loss is None
                and p.total > 0 and p.done >= p.total * 0.5):
            cfg.put("generation_rate", f"{float(p.rate):.1f},{int(steps)}")

    def _wire_controller(self) -> None:
        """Show what the controller says, and pass its outcomes on."""
        c = self.controller
        c.generation_finished.connect(self._note_finished_rate)    # before it is passed on
        for name in ("dataset_loaded", "models_listed", "model_loaded", "generation_finished",
                     "generation_cancelled", "heatmap_updated", "de_updated", "umap_updated",
                     "training_finished", "exported"):
            getattr(c, name).connect(getattr(self, name))
        c.error.connect(lambda m, d, t: self.show_error(m, d, title=t))
        c.status.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        c.show_page.connect(lambda key: self.nav.setCurrentRow(PAGE_ROWS[key]))
        c.fg_started.connect(self.run_bar.start)
        c.fg_progress.connect(self.run_bar.update)
        c.fg_progress.connect(self._note_rate)
        c.fg_cancelling.connect(self.run_bar.cancelling)
        c.fg_ended.connect(self.run_bar.idle)
        c.fg_ended.connect(lambda _t: (setattr(self, "_run_steps", None),
                                       self.compose_page._update_summary()))
        d = self.data_page
        c.dataset_loading.connect(d.set_loading)
        c.dataset_failed.connect(d.set_load_error)
        c.dataset_kept.connect(d.restore_summary)
        c.model_loading.connect(lambda info: self.models_page.set_active(
            f"Loading <b>{esc(info.name)}</b>…"))
        c.model_failed.connect(lambda info, m: self.models_page.set_active(
            f"<span style='color:#b00020'>Could not load <b>{esc(info.name)}</b>: {esc(m)}"
            "</span><br>" + self._in_use_text()))
        c.models_message.connect(lambda text, err: self.models_page.set_message(text, error=err))
        c.umap_status.connect(self.results_page.set_umap_status)
        c.view_ready.connect(self._view_ready)
        c.view_failed.connect(self.results_page.view_failed)
        c.umap_scores_ready.connect(self.results_page.color_umap_by_score)
        c.session_saved.connect(self.session_saved)
        c.session_opened.connect(self._session_opened)
        c.train_progress.connect(self.train_page.on_progress)

    # -- session events ----------------------------------------------------------------------------
    def _dataset_changed(self) -> None:
        s = self.session
        self._refresh_recent()
        self.data_page.set_dataset(s.adata, s.summary, s.guessed_schema, s.data_path)
        self.setWindowTitle(f"{Path(s.data_path).name} — {APP_NAME}")

    def _context_changed(self) -> None:
        s = self.session
        self.train_page.set_context(s.adata, s.schema, s.schema_ok, s.data_path)
        self.perturb_page.set_context(s.adata, s.schema, s.model)

    def _models_changed(self) -> None:
        m = self.session.models
        self.models_page.set_models(list(m.infos), select=m.select, broken=list(m.broken))

    def _model_changed(self) -> None:
        s = self.session
        self.device_label.setText(s.device_text or "Device: —")
        self.models_page.set_device(s.device_text or "")
        self.models_page.set_active(self._in_use_text())
        self.model_label.setText(f"Model: {s.model.name}" if s.model is not None else "No model")
        self.compose_page.set_model(s.model)
        self.perturb_page.set_context(s.adata, s.schema, s.model)

    def _in_use_text(self) -> str:
        model = self.session.model
        if model is None:
            return "No model in use."
        return f"In use: <b>{esc(model.name)}</b> ({len(model.genes):,} genes)"

    def _experiment_changed(self) -> None:
        exp = self.session.experiment
        self.results_page.set_experiment(exp)
        if exp is not None and getattr(exp, "read_only", ""):
            self.results_page.header.setText(
                self.results_page.header.text() + "<br><span style='color:#a15c00'>⚠ "
                f"Read-only: {esc(exp.read_only)}.</span>")
        self._history_changed()
        self._update_actions()
        self.nav.setCurrentRow(PAGE_ROWS["results"])

    def _history_changed(self) -> None:
        s = self.session
        cur = s.current_entry
        self.results_page.set_history(s.history, cur.id if cur is not None else None)
        self.act_save_session.setEnabled(bool(s.history))

    def _rename_entry(self, entry_id: int, name: str) -> None:
        self.session.rename_entry(entry_id, name)
        self.controller.autosave_session()

    def _view_ready(self, kind: str, result) -> None:
        self.results_page.set_view(kind, result)
        self.view_updated.emit(kind)

    def _analysis_changed(self) -> None:
        a = self.session.analysis
        self.results_page.set_heatmap(a.genes, a.matrix, a.labels, note=a.note, extras=a.extras,
                                      extras_note=a.extras_note)

    def _busy_changed(self) -> None:
        """While a job runs, the buttons that would start another one are disabled."""
        busy = self.session.busy is not None
        for page in (self.compose_page, self.perturb_page, self.train_page):
            page.busy = busy
        if busy:
            for b in (self.compose_page.generate_btn, self.perturb_page.run_btn,
                      self.train_page.train_btn):
                b.setEnabled(False)
        else:
            self.compose_page._validate()
            self.perturb_page._validate()
            self.train_page._validate()
        self._update_actions()

    def _update_actions(self) -> None:
        has = self.session.experiment is not None
        for a in (self.act_save_h5ad, self.act_save_csv, self.act_save_plot, self.act_save_de,
                  self.act_copy_command):
            a.setEnabled(has)
        self.act_cancel.setEnabled(self.session.busy is not None)
        self.act_generate.setEnabled(self.session.busy is None)

    # -- settings ---------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = cfg.settings()
        geo = s.value("window/geometry")
        if isinstance(geo, QByteArray | bytes) and geo:
            self.restoreGeometry(QByteArray(geo))
        else:
            self.resize(1400, 900)
        state = s.value("window/state")
        if isinstance(state, QByteArray | bytes) and state:
            self.restoreState(QByteArray(state))
        for name, sp in (("window/splitter", self.splitter),
                         ("window/data_splitter", self.data_page.splitter),
                         ("window/models_splitter", self.models_page.splitter)):
            v = s.value(name)
            if isinstance(v, QByteArray | bytes) and v:
                sp.restoreState(QByteArray(v))
        self.act_autosave.setChecked(str(s.value("autosave", "true")).lower() == "true")
        self._autosave_toggled(self.act_autosave.isChecked())
        self._refresh_recent()

    def _save_settings(self) -> None:
        s = cfg.settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("window/data_splitter", self.data_page.splitter.saveState())
        s.setValue("window/models_splitter", self.models_page.splitter.saveState())
        s.setValue("autosave", "true" if self.act_autosave.isChecked() else "false")
        if self.session.model_info is not None:
            s.setValue("last_model", self.session.model_info.name)
        s.sync()

    def toggle_autosave(self) -> None:
        """File > Save every result automatically (remembered)."""
        cfg.put("autosave", "true" if self.act_autosave.isChecked() else "false")

    def _autosave_toggled(self, on: bool) -> None:
        self.session.autosave = bool(on)

    def _refresh_recent(self) -> None:
        files = cfg.recent_files()
        self.data_page.set_recent(files)
        self.recent_menu.clear()
        for f in files:
            a = self.recent_menu.addAction(f)
            a.triggered.connect(lambda _=False, p=f: self.load_dataset(p))
        self.recent_menu.setEnabled(bool(files))

    def choose_output_dir(self) -> None:
        d = dialogs.ask_folder(self, "Output folder", str(cfg.output_dir()))
        if d:
            cfg.put("output_dir", d)
            self.statusBar().showMessage(f"Results will be saved in {d}", 5000)

    def closeEvent(self, event) -> None:  # noqa: N802
        self._save_settings()
        self.controller.shutdown()
        super().closeEvent(event)

    # -- errors -----------------------------------------------------------------------------------
    def show_error(self, message: str, details: str = "", *, title: str = "Something went wrong"
                   ) -> None:
        log.error("%s\n%s", message, details)
        self.last_error = message
        dialogs.error_box(self, message, details, title)
        # one short line: a long message would run into the model and device labels
        line = " ".join(message.split())
        self.statusBar().showMessage(line if len(line) <= 90 else line[:89] + "…", 10000)
        self.error_shown.emit(message)

    # -- what the user does -------------------------------------------------------------------------
    def cancel_running(self) -> None:
        self.controller.cancel_running()

    def open_dialog(self) -> None:
        path = dialogs.ask_dataset(self)
        if path:
            self.load_dataset(path)

    def open_folder_dialog(self) -> None:
        path = dialogs.ask_folder(self, "Open 10x folder")
        if path:
            self.load_dataset(path)

    def load_dataset(self, path: str) -> None:
        self.controller.load_dataset(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            p = urls[0].toLocalFile()
            if Path(p).is_dir() or p.lower().endswith(DATA_SUFFIXES):
                event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()
            self.load_dataset(urls[0].toLocalFile())

    def refresh_models(self) -> None:
        self.controller.refresh_models()

    def use_model(self, info) -> None:
        self.controller.use_model(info)

    def import_model_dialog(self) -> None:
        folder = dialogs.ask_folder(self, "Import model folder")
        if folder:
            self.import_model(folder)

    def import_model(self, folder: str, name: str | None = None) -> None:
        self.controller.import_model(folder, name)

    def focus_gene(self) -> None:
        self.nav.setCurrentRow(PAGE_ROWS["results"])
        self.results_page.tabs.setCurrentIndex(1)
        self.results_page.gene.setFocus()
        self.results_page.gene.selectAll()

    def export(self, kind: str, path: str | None = None) -> str | None:
        """Save the cells ('h5ad', 'csv': on a worker), the plot on the Results page ('plot') or
        the DE table ('de'); ask where unless ``path`` is given. The path, or None."""
        exp = self.session.experiment
        if exp is None:
            self.show_error("There is nothing to save yet: generate cells first.",
                            title="Nothing to save")
            return None
        de = self.session.de
        if kind == "de" and de is None:
            self.show_error("The effect table is not ready yet.")
            return None
        if path is None:
            stem = safe_filename(f"{exp.model_name}_{exp.mode}")
            name = {"plot": f"{stem}_{self.results_page.current_plot_name()}.svg",
                    "de": f"{stem}_effects_"
                          f"{safe_filename(de.label if de else '', default='condition')}.csv",
                    "h5ad": f"{stem}.h5ad", "csv": f"{stem}.csv"}[kind]
            path = dialogs.ask_save(self, kind, cfg.save_dir() / name)
        if not path:
            return None
        path = dialogs.with_suffix(path, kind)
        if kind == "de":
            return self.controller.export_table(de.frame, path)
        if kind == "plot":
            return self.save_figure(path)
        self.controller.export_cells(kind, path)
        return path

    def save_figure(self, path: str, name: str | None = None, *, dpi: int | None = None
                    ) -> str | None:
        """Save the figure of a Results tab (default: the one shown) with matplotlib: SVG or PDF
        as vectors, PNG at the dpi chosen on the Results page."""
        from .figures import save_figure

        dpi = int(dpi or self.results_page.dpi.value())
        try:
            fig = self.results_page.figure_for(name)
            if fig is None:
                self.show_error("This view has nothing to save yet: wait until it is drawn.",
                                title="Nothing to save")
                return None
            save_figure(fig, path, dpi=dpi)
        except Exception as e:  # noqa: BLE001
            self.show_error(f"Could not save the figure to {path}: {e}")
            return None
        return self.controller.note_exported(path)

    # -- help -------------------------------------------------------------------------------------
    def about_text(self) -> str:
        return dialogs.about_text(self.session.device_text)

    def about(self) -> None:
        dialogs.show_about(self, self.about_text())

    def show_shortcuts(self) -> None:
        dialogs.show_shortcuts(self)

    def open_log(self) -> None:
        dialogs.open_log()
