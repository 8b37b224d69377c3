"""The main window: pages on the left, the current page in the middle, the run bar at the bottom.

The window holds the session state (dataset, column roles, model, latest experiment) and starts
background jobs through :class:`app.workers.JobRunner`. Every engine call that can take more than
a few milliseconds runs on a worker thread; results come back through signals.
"""

from __future__ import annotations

import html
import logging
import math
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from . import APP_NAME, __version__
from . import settings as cfg
from .experiment import Experiment
from .messages import GenerateRequest, PerturbRequest, RunOutput, SaveError, TrainRequest
from .panels.composer import ComposerPanel
from .panels.data import FILE_FILTER, DataPanel
from .panels.models import ModelsPanel
from .panels.perturb import PerturbPanel
from .panels.results import ResultsPanel
from .panels.train import TrainPanel
from .paths import path_inside, safe_filename
from .richtext import esc, plain
from .workers import JobRunner

log = logging.getLogger(__name__)

PAGES = [("data", "Data", "Open a dataset and map its columns"),
         ("models", "Models", "Choose a model and read its card"),
         ("compose", "Compose", "Compose conditions and generate cells"),
         ("perturb", "Perturb my cells", "Perturb the control cells of your dataset"),
         ("train", "Train", "Train a model on your dataset"),
         ("results", "Results", "Heatmap, UMAP and differential expression")]
DATA_SUFFIXES = (".h5ad", ".csv", ".tsv", ".txt", ".gz", ".h5", ".mtx")


def icon_path() -> Path:
    return Path(__file__).resolve().parents[1] / "resources" / "icons" / "perturb-studio.png"


class RunBar(QWidget):
    """Progress of the running job: phase, bar, cells/s and time left, Cancel."""

    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = plain(QLabel("Ready."))  # shows file and model names
        self.label.setMinimumWidth(260)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.bar.setFormat("%p%")
        self.bar.setToolTip("Progress of the running job")
        self.rate = plain(QLabel(""))
        self.rate.setMinimumWidth(230)
        self.rate.setToolTip("Speed and estimated time left")
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Stop the running job (Esc). Nothing half-done is kept.")
        self.cancel.clicked.connect(self.cancel_clicked)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 4, 8, 4)
        lay.addWidget(self.label)
        lay.addWidget(self.bar, 1)
        lay.addWidget(self.rate)
        lay.addWidget(self.cancel)
        self.idle()

    def start(self, text: str) -> None:
        self.label.setText(text)
        self.bar.setFormat("%p%")
        self.bar.setValue(0)
        self.bar.setRange(0, 0)  # busy until the first progress record
        self.rate.setText("starting…")
        self.cancel.setEnabled(True)

    def update(self, p) -> None:  # noqa: D401 - Qt-style name clash is harmless here
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * min(max(p.fraction, 0.0), 1.0)))
        parts = []
        if p.rate:
            unit = "cells/s" if "cell" in p.phase or "generat" in p.phase or "perturb" in p.phase \
                else "steps/s"
            parts.append(f"{p.rate:,.0f} {unit}")
        if p.eta_s is not None and math.isfinite(p.eta_s):
            parts.append(f"{_fmt_time(p.eta_s)} left")
        if p.total:
            parts.append(f"{p.done:,}/{p.total:,}")
        self.rate.setText(" · ".join(parts))
        self.label.setText(p.phase[:1].upper() + p.phase[1:] + "…")

    def idle(self, text: str = "Ready.") -> None:
        self.label.setText(text)
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.bar.setFormat("")
        self.rate.setText("")
        self.cancel.setEnabled(False)


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"


class MainWindow(QMainWindow):
    # signals the tests and the screenshot tour wait on
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

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        if icon_path().exists():
            self.setWindowIcon(QIcon(str(icon_path())))
        self.setAcceptDrops(True)
        self.jobs = JobRunner(self)
        self.adata = None
        self.data_path: str | None = None
        self.schema = None
        self.schema_ok = False
        self.model = None
        self.model_info = None
        self.experiment: Experiment | None = None
        self.embedding = None  # dict(coords, meta)
        self.last_error: str | None = None
        self.last_saved: str | None = None
        self._fg_slot: str | None = None
        self._fg_t0 = 0.0

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

        self._build_actions()
        self._wire()
        self._restore_settings()
        self.nav.setCurrentRow(0)
        QTimer.singleShot(0, self.refresh_models)

    # -- actions, menus, toolbar ----------------------------------------------------------------
    def _act(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
            a.setToolTip(f"{tip} ({QKeySequence(shortcut).toString()})" if shortcut else tip)
        a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        A = self._act
        self.act_open = A("&Open dataset…", self.open_dialog, QKeySequence.StandardKey.Open,
                          "Open an h5ad, CSV/TSV or 10x file")
        self.act_open_folder = A("Open 10x &folder…", self.open_folder_dialog, None,
                                 "Open a 10x folder (matrix.mtx, features.tsv, barcodes.tsv)")
        self.act_save_h5ad = A("&Save cells as h5ad…", lambda: self.export("h5ad"),
                               QKeySequence.StandardKey.Save, "Save the generated cells (h5ad)")
        self.act_save_csv = A("Save counts as &CSV…", lambda: self.export("csv"), None,
                              "Save the generated counts as a CSV table")
        self.act_save_plot = A("Save &plot…", lambda: self.export("plot"), "Ctrl+P",
                               "Save the plot on the Results page as PNG or SVG")
        self.act_save_de = A("Save &DE table…", lambda: self.export("de"), None,
                             "Save the differential-expression table as CSV")
        self.act_outdir = A("Output &folder…", self.choose_output_dir, None,
                            "Folder where results are saved")
        self.act_autosave = A("Save every result automatically", self._toggle_autosave, None,
                              "Write each finished experiment to the output folder as h5ad")
        self.act_autosave.setCheckable(True)
        self.act_quit = A("&Quit", self.close, QKeySequence.StandardKey.Quit, "Quit")
        self.act_import = A("&Import model folder…", self.import_model_dialog, "Ctrl+I",
                            "Add a model folder to your models")
        self.act_refresh = A("&Refresh model list", self.refresh_models, "F5",
                             "Look for new models on disk")
        self.act_generate = A("&Generate", self.compose_page._generate, None,
                              "Generate the composed experiment")
        self.act_generate.setShortcut(QKeySequence("Ctrl+G"))
        self.act_cancel = A("&Cancel", self.cancel_running, QKeySequence(Qt.Key.Key_Escape),
                            "Stop the running job")
        self.act_find = A("Find gene in UMAP", self._focus_gene, QKeySequence.StandardKey.Find,
                          "Colour the UMAP by a gene")
        self.act_about = A("&About Perturb Studio", self.about, QKeySequence.StandardKey.HelpContents,
                           "Versions and device")
        self.act_log = A("Open &log file", self.open_log, None,
                         "Open the log file (useful when reporting a problem)")
        self.act_shortcuts = A("&Keyboard shortcuts", self.show_shortcuts, None,
                               "List the keyboard shortcuts")
        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.act_open)
        m.addAction(self.act_open_folder)
        self.recent_menu = m.addMenu("Open &recent")
        m.addSeparator()
        for a in (self.act_save_h5ad, self.act_save_csv, self.act_save_plot, self.act_save_de):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_outdir)
        m.addAction(self.act_autosave)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Model")
        m.addAction(self.act_import)
        m.addAction(self.act_refresh)
        m = mb.addMenu("&Run")
        m.addAction(self.act_generate)
        m.addAction(self.act_cancel)
        m = mb.addMenu("&View")
        self.page_actions = []
        for i, (_key, title, tip) in enumerate(PAGES):
            a = A(title, lambda _=False, r=i: self.nav.setCurrentRow(r), f"Ctrl+{i + 1}", tip)
            m.addAction(a)
            self.page_actions.append(a)
        m.addSeparator()
        m.addAction(self.act_find)
        m = mb.addMenu("&Help")
        m.addAction(self.act_shortcuts)
        m.addAction(self.act_log)
        m.addAction(self.act_about)
        tb = self.addToolBar("Main")
        tb.setObjectName("main-toolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_open, self.act_import, self.act_generate, self.act_cancel,
                  self.act_save_h5ad, self.act_save_plot):
            tb.addAction(a)
        self._update_actions()

    def _wire(self) -> None:
        d = self.data_page
        d.open_requested.connect(self.open_dialog)
        d.open_folder_requested.connect(self.open_folder_dialog)
        d.open_path.connect(self.load_dataset)
        d.schema_changed.connect(self._schema_changed)
        self.models_page.model_chosen.connect(self.use_model)
        self.models_page.import_requested.connect(self.import_model_dialog)
        self.models_page.refresh_requested.connect(self.refresh_models)
        self.compose_page.generate_requested.connect(self.generate)
        self.perturb_page.perturb_requested.connect(self.perturb)
        self.train_page.train_requested.connect(self.train)
        r = self.results_page
        r.export_requested.connect(self.export)
        r.de_requested.connect(self.compute_de)
        r.color_requested.connect(self.color_umap)

    def _update_actions(self) -> None:
        has = self.experiment is not None
        for a in (self.act_save_h5ad, self.act_save_csv, self.act_save_plot, self.act_save_de):
            a.setEnabled(has)
        self.act_cancel.setEnabled(self._fg_slot is not None)
        self.act_generate.setEnabled(self._fg_slot is None)

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
        self._refresh_recent()

    def _save_settings(self) -> None:
        s = cfg.settings()
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("window/data_splitter", self.data_page.splitter.saveState())
        s.setValue("window/models_splitter", self.models_page.splitter.saveState())
        s.setValue("autosave", "true" if self.act_autosave.isChecked() else "false")
        if self.model_info is not None:
            s.setValue("last_model", self.model_info.name)
        s.sync()

    def _toggle_autosave(self) -> None:
        cfg.put("autosave", "true" if self.act_autosave.isChecked() else "false")

    def _refresh_recent(self) -> None:
        files = cfg.recent_files()
        self.data_page.set_recent(files)
        self.recent_menu.clear()
        for f in files:
            a = self.recent_menu.addAction(f)
            a.triggered.connect(lambda _=False, p=f: self.load_dataset(p))
        self.recent_menu.setEnabled(bool(files))

    def choose_output_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Output folder", str(cfg.output_dir()))
        if d:
            cfg.put("output_dir", d)
            self.statusBar().showMessage(f"Results will be saved in {d}", 5000)

    def closeEvent(self, event) -> None:  # noqa: N802
        self._save_settings()
        self.jobs.shutdown()
        super().closeEvent(event)

    # -- errors -----------------------------------------------------------------------------------
    def show_error(self, message: str, details: str = "", *, title: str = "Something went wrong"
                   ) -> None:
        log.error("%s\n%s", message, details)
        self.last_error = message
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok,
                          self)
        box.setTextFormat(Qt.TextFormat.PlainText)  # messages quote file, model and gene names
        box.setInformativeText(f"Details are in the log file: {cfg.log_path()}")
        if details:
            box.setDetailedText(details)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setObjectName("error-box")
        box.open()
        self.statusBar().showMessage(message, 10000)
        self.error_shown.emit(message)

    # -- foreground job + run bar ------------------------------------------------------------------
    def _start_fg(self, slot: str, text: str, fn, *, on_finished, on_cancelled=None,
                  on_progress=None, on_failed=None) -> bool:
        """Start the foreground job; False (and a message) when another one is running."""
        if self._fg_slot is not None and self.jobs.running(self._fg_slot):
            if self._fg_slot != slot or slot != "load":
                self.show_error("Another job is still running. Wait for it or press Cancel.",
                                title="Busy")
                return False
        self._fg_slot = slot
        self._fg_t0 = time.perf_counter()
        self.run_bar.start(text)
        self._set_busy(True)
        self._update_actions()

        def progress(p):
            self.run_bar.update(p)
            if on_progress is not None:
                on_progress(p)

        def done_ok(result):
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
            self.show_error(msg, details)

        self.jobs.start(slot, fn, name=text, on_progress=progress, on_finished=done_ok,
                        on_failed=failed, on_cancelled=cancelled)
        return True

    def _fg_end(self, text: str) -> None:
        self._fg_slot = None
        self.run_bar.idle(text)
        self._set_busy(False)
        self._update_actions()

    def _set_busy(self, busy: bool) -> None:
        """While a job runs, the buttons that would start another one are disabled."""
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

    def cancel_running(self) -> None:
        if self._fg_slot is not None:
            self.jobs.cancel(self._fg_slot)
            self.run_bar.label.setText("Cancelling…")
            self.run_bar.cancel.setEnabled(False)
        else:
            self.jobs.cancel("umap")

    # -- data ---------------------------------------------------------------------------------------
    def open_dialog(self) -> None:
        start = str(Path(cfg.recent_files()[0]).parent) if cfg.recent_files() else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open dataset", start, FILE_FILTER)
        if path:
            self.load_dataset(path)

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open 10x folder")
        if path:
            self.load_dataset(path)

    def load_dataset(self, path: str) -> None:
        path = str(path)
        if not Path(path).exists():
            msg = f"The file {path} does not exist (was it moved or deleted?)."
            self.data_page.set_load_error(path, msg)
            self.show_error(msg)
            return
        self.nav.setCurrentRow(0)

        def fn(progress, cancel):
            import engine

            adata = engine.read_dataset(path, progress=progress)
            if cancel.is_set():
                return None
            summary = engine.summarize_dataset(adata)
            schema = engine.guess_schema(adata)
            return adata, summary, schema

        # a failed or cancelled load leaves the dataset loaded before in use, and says so
        if self._start_fg("load", f"Loading {Path(path).name}…", fn,
                          on_finished=lambda r: self._dataset_ready(path, r),
                          on_failed=lambda m: self.data_page.set_load_error(path, m),
                          on_cancelled=self.data_page.restore_summary):
            self.data_page.set_loading(path)

    def _dataset_ready(self, path: str, result) -> None:
        adata, summary, schema = result
        self.adata, self.data_path = adata, path
        cfg.add_recent_file(path)
        self._refresh_recent()
        self.data_page.set_dataset(adata, summary, schema, path)
        self.setWindowTitle(f"{Path(path).name} — {APP_NAME}")
        self.statusBar().showMessage(f"Loaded {adata.n_obs:,} cells × {adata.n_vars:,} genes "
                                     f"from {Path(path).name}", 8000)
        self.dataset_loaded.emit()

    def _schema_changed(self, schema) -> None:
        self.schema = schema
        self.schema_ok = self.data_page.schema_ok
        self.train_page.set_context(self.adata, schema, self.schema_ok, self.data_path)
        self.perturb_page.set_context(self.adata, schema, self.model)

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

    # -- models -------------------------------------------------------------------------------------
    def refresh_models(self, select: str | None = None) -> None:
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
            return infos, broken

        def done(result):
            infos, broken = result
            last = select or (self.model_info.name if self.model_info else None) or \
                cfg.get("last_model")
            self.models_page.set_models(infos, select=last, broken=broken)
            self.models_listed.emit()
            if self.model is None and last and any(i.name == last for i in infos) and \
                    select is None:
                self.use_model(next(i for i in infos if i.name == last))

        def failed(m, d):
            self.models_page.set_message(f"Could not list the models: {m}", error=True)
            self.show_error(m, d)

        self.jobs.start("models", fn, on_finished=done, on_failed=failed)

    def use_model(self, info) -> None:
        self.models_page.set_active(f"Loading <b>{esc(info.name)}</b>…")

        def fn(progress, cancel):
            import engine

            model = engine.PerturbModel.load(info.path)
            _warm_imports()
            if os.environ.get("PERTURB_STUDIO_UMAP_IN_THREAD") != "1":
                from .embed_process import server

                server().warm()  # start the UMAP helper process and compile UMAP there now
            try:
                dev = engine.device_info(model.device)
            except Exception:  # noqa: BLE001 - the model still works on its own device
                dev = {"kind": str(model.device), "name": str(model.device), "torch": ""}
            return model, dev

        def done(result):
            model, dev = result
            self.model, self.model_info = model, info
            cfg.put("last_model", info.name)
            kind = {"cuda": "GPU", "mps": "GPU (Apple)", "cpu": "CPU"}.get(dev["kind"], dev["kind"])
            self.device_text = f"Device: {kind} — {dev['name']}"
            self.device_label.setText(self.device_text)
            self.models_page.set_device(self.device_text)
            self.models_page.set_active(self._in_use_text())
            self.model_label.setText(f"Model: {model.name}")  # plain-text label
            self.compose_page.set_model(model)
            self.perturb_page.set_context(self.adata, self.schema, model)
            self.model_loaded.emit()

        def failed(m, d):
            self.models_page.set_active(f"<span style='color:#b00020'>Could not load "
                                        f"<b>{esc(info.name)}</b>: {esc(m)}</span><br>"
                                        + self._in_use_text())
            self.show_error(m, d)

        self.jobs.start("model", fn, on_finished=done, on_failed=failed)

    def _in_use_text(self) -> str:
        if self.model is None:
            return "No model in use."
        return f"In use: <b>{esc(self.model.name)}</b> ({len(self.model.genes):,} genes)"

    def import_model_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import model folder")
        if folder:
            self.import_model(folder)

    def import_model(self, folder: str, name: str | None = None) -> None:
        """Copy a model folder into the user's models (the engine checks it and the name and
        refuses links, odd files and unsafe names with a ModelError, shown here)."""
        def fn(progress, cancel):
            import engine

            return engine.import_model(folder, name=name or None)

        def done(info):
            self.models_page.set_message(f"Imported {info.name} from {folder}.")
            self.statusBar().showMessage(f"Imported model {info.name}", 8000)
            self.refresh_models(info.name)

        def failed(m, d):
            self.models_page.set_message(f"Could not import {folder}: {m}", error=True)
            self.show_error(m, d, title="Import failed")

        self.nav.setCurrentRow(1)  # the outcome is said on the Models page
        self.models_page.set_message(f"Checking {folder}…")
        self.jobs.start("import", fn, on_finished=done, on_failed=failed)

    # -- generation ------------------------------------------------------------------------------
    def _autosave_path(self, kind: str) -> Path | None:
        """Where a finished experiment is saved automatically: a file in
        ``<output folder>/perturb-studio`` whose name is built from the model's name made safe
        (a name such as ``../x`` cannot move it elsewhere)."""
        if not self.act_autosave.isChecked():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = safe_filename(self.model.name if self.model is not None else "model")
        folder = cfg.output_dir() / "perturb-studio"
        try:
            return path_inside(folder, f"{stamp}_{name}_{safe_filename(kind)}.h5ad")
        except ValueError as e:  # not reachable with a safe name; never write elsewhere
            self.show_error(f"The result will not be saved automatically: {e}.")
            return None

    def generate(self, req: GenerateRequest) -> None:
        if self.model is None:
            self.show_error("Choose a model on the Models page first.", title="No model")
            return
        model, out = self.model, self._autosave_path("generated")

        def fn(progress, cancel):
            import engine
            from engine.progress import check_cancel

            adata = model.generate_many(list(req.conditions), req.n, include_control=True,
                                        seed=req.seed, steps=req.steps, guidance=req.guidance,
                                        progress=progress, cancel=cancel)
            check_cancel(cancel)
            return _autosave(engine, adata, out)

        self._start_fg("run", f"Generating {req.n_total:,} cells…", fn,
                       on_finished=lambda r: self._show_experiment(
                           Experiment.from_generated(r.adata, model_name=model.name,
                                                     saved_to=r.saved_to), r.save_error),
                       on_cancelled=self.generation_cancelled.emit)

    def perturb(self, req: PerturbRequest) -> None:
        if self.model is None or self.adata is None:
            return
        model, out = self.model, self._autosave_path("perturbed")
        cells = self.adata[req.cell_index].copy()

        def fn(progress, cancel):
            import engine
            from engine.progress import check_cancel

            adata = model.perturb(cells, req.condition, seed=req.seed, steps=req.steps,
                                  progress=progress, cancel=cancel)
            check_cancel(cancel)
            return _autosave(engine, adata, out)

        self._start_fg("run", f"Perturbing {cells.n_obs:,} cells…", fn,
                       on_finished=lambda r: self._show_experiment(
                           Experiment.from_perturbed(r.adata, cells, model_name=model.name,
                                                     saved_to=r.saved_to), r.save_error),
                       on_cancelled=self.generation_cancelled.emit)

    def _show_experiment(self, exp: Experiment, save_error: SaveError | None = None) -> None:
        self.experiment = exp
        self.embedding = None
        self.last_saved = exp.saved_to
        self.results_page.set_experiment(exp)
        self._update_actions()
        self.nav.setCurrentRow(5)
        self.generation_finished.emit()
        self.analyse()
        self.compute_umap()
        if save_error:
            self.show_error("The cells were generated, but saving them automatically failed: "
                            f"{save_error.message}. Use File > Save cells to save them "
                            "elsewhere.", save_error.details)

    def analyse(self) -> None:
        exp = self.experiment
        if exp is None:
            return

        def fn(progress, cancel):
            import engine

            groups = {k: exp.group(k) for k in exp.labels}
            controls = {k: exp.control(k) for k in exp.labels}
            genes, mat = engine.top_changed_genes(groups, controls, n=30)
            first = exp.labels[0]
            de = engine.differential_expression(groups[first], controls[first])
            return genes, mat, first, de

        def done(r):
            if exp is not self.experiment:
                return
            genes, mat, first, de = r
            note = ""
            if exp.only_controls and len(exp.labels) > 1:
                note = ("No perturbation was generated, so each population is compared with all "
                        "the other generated cells: these are its marker genes.")
            elif exp.only_controls:
                note = ("Only one unperturbed population was generated: there is nothing to "
                        "compare it with. Add a perturbation or another cell type on the "
                        "Compose page.")
            self.results_page.set_heatmap(genes, mat, exp.labels, note=note)
            self.heatmap_updated.emit()
            self.results_page.set_de(first, de)
            self.de_updated.emit()

        self.jobs.start("analyse", fn, on_finished=done,
                        on_failed=lambda m, d: self.show_error(m, d))

    def compute_de(self, label: str) -> None:
        exp = self.experiment
        if exp is None or label not in exp.groups:
            return

        def fn(progress, cancel):
            import engine

            return engine.differential_expression(exp.group(label), exp.control(label))

        def done(df):
            if exp is self.experiment:
                self.results_page.set_de(label, df)
                self.de_updated.emit()

        self.jobs.start("de", fn, on_finished=done, on_failed=lambda m, d: self.show_error(m, d))

    def compute_umap(self) -> None:
        exp = self.experiment
        if exp is None:
            return
        real, schema = self.adata, self.schema
        if exp.mode == "perturb" and real is None:
            real = exp.source  # the whole dataset is shown when open: where should cells go?
        max_real = 20_000

        def fn(progress, cancel):
            import numpy as np
            import pandas as pd

            import engine

            parts = {"generated": exp.adata}
            gen_obs = exp.adata.obs
            meta = [pd.DataFrame({
                "source": "generated",
                "condition": gen_obs["condition"].astype(str).to_numpy(),
                "cell type": gen_obs["cell_type"].astype(str).to_numpy()
                if "cell_type" in gen_obs else "",
            })]
            real_ad = None
            if real is not None:
                real_ad = real
                if real.n_obs > max_real:
                    idx = np.sort(np.random.default_rng(0).choice(real.n_obs, max_real,
                                                                  replace=False))
                    real_ad = real[idx]
                parts["real"] = real_ad
                obs = real_ad.obs
                pk = schema.perturbation_key if schema is not None else None
                ck = schema.cell_type_key if schema is not None else None
                cond = (obs[pk].astype(str).to_numpy() if pk and pk in obs
                        else np.full(real_ad.n_obs, "cells", dtype=object))
                meta.append(pd.DataFrame({
                    "source": "real",
                    "condition": np.asarray(["real: " + str(c) for c in cond], dtype=object),
                    "cell type": obs[ck].astype(str).to_numpy() if ck and ck in obs else "",
                }))
            if os.environ.get("PERTURB_STUDIO_UMAP_IN_THREAD") == "1":
                coords, labels = engine.embed_umap(parts, progress=progress, cancel=cancel)
            else:
                from .embed_process import server

                coords, labels = server().embed(parts, progress=progress, cancel=cancel)
            meta = pd.concat(meta, ignore_index=True)
            return {"coords": coords, "meta": meta, "parts": parts}

        def prog(p):
            self.results_page.set_umap_status(f"Computing the UMAP in the background: {p.phase} "
                                              f"({int(100 * p.fraction)}%)…")

        def done(r):
            if exp is not self.experiment:
                return
            self.embedding = r
            self.results_page.umap.set_coords(r["coords"])
            meta = r["meta"]
            n_gen = int((meta["source"] == "generated").sum())
            n_real = len(meta) - n_gen
            self.results_page.umap.describe = self._describe_cell
            self.results_page.set_umap_status(
                f"{n_gen:,} generated cells" + (f" with {n_real:,} real cells from "
                                                 f"{Path(self.data_path or '').name or 'your data'}"
                                                 if n_real else
                                                 " (open a dataset to compare with real cells)")
                + ". Hover over a dot for details.")
            self.color_umap(self.results_page.color_by.currentText())
            self.umap_updated.emit()

        self.results_page.set_umap_status("Computing the UMAP in the background…")
        self.jobs.start("umap", fn, on_progress=prog, on_finished=done,
                        on_failed=lambda m, d: self.results_page.set_umap_status(
                            f"UMAP failed: {m}"),
                        on_cancelled=lambda: self.results_page.set_umap_status(
                            "UMAP cancelled."))

    def _describe_cell(self, i: int) -> str:
        if self.embedding is None:
            return ""
        row = self.embedding["meta"].iloc[i]
        ct = f" · cell type {row['cell type']}" if row["cell type"] else ""
        extra = ""
        g = getattr(self, "_umap_gene", None)
        if g is not None:
            extra = f" · {g[0]} = {g[1][i]:.2f}"
        return f"cell {i:,} · {row['source']} · {row['condition']}{ct}{extra}"

    def color_umap(self, what: str) -> None:
        if self.embedding is None:
            return
        meta = self.embedding["meta"]
        plot = self.results_page.umap
        if what.startswith("gene:"):
            gene = what[5:]
            from engine.analysis import gene_values

            parts = self.embedding["parts"]
            if not any(gene in a.var_names for a in parts.values()):
                matches = [g for g in self.experiment.adata.var_names
                           if g.upper() == gene.upper()]
                if not matches:
                    self.results_page.gene_msg.setText(f"{gene}: not among the genes")
                    return
                gene = matches[0]
            import numpy as np

            vals = np.concatenate([gene_values(a, gene) for a in parts.values()])
            self._umap_gene = (gene, vals)
            self.results_page.gene_msg.setText("")
            plot.color_by_value(vals, title=f"{gene} (log normalised expression)")
            return
        self._umap_gene = None
        col = {"condition": "condition", "cell type": "cell type", "source": "source"}[what]
        values = meta[col].astype(str).to_numpy()
        order = list(dict.fromkeys(values))
        if col == "condition":
            gen = [v for v in order if not v.startswith("real: ")]
            realv = [v for v in order if v.startswith("real: ")]
            order = gen + realv
            grey = set(realv) if len(realv) > 0 else set()
            plot.color_by_category(values, order=order, grey=grey,
                                   title="Generated cells by condition (real cells in grey)"
                                   if grey else "Generated cells by condition")
        else:
            plot.color_by_category(values, order=order, title=f"Cells by {col}")

    def _focus_gene(self) -> None:
        self.nav.setCurrentRow(5)
        self.results_page.tabs.setCurrentIndex(1)
        self.results_page.gene.setFocus()
        self.results_page.gene.selectAll()

    # -- training ---------------------------------------------------------------------------------
    def train(self, req: TrainRequest) -> None:
        if self.adata is None or self.schema is None:
            return
        adata, schema, data_path = self.adata, self.schema, self.data_path

        def fn(progress, cancel):
            import engine

            out_dir = engine.user_models_dir() / req.name
            if out_dir.exists():
                raise engine.PerturbStudioError(
                    f"a model called {req.name!r} already exists in {out_dir.parent}; "
                    "choose another name")
            engine.train_model(adata, schema, out_dir, backbone=req.backbone, seed=req.seed,
                               name=req.name, progress=progress, cancel=cancel,
                               data_file=Path(data_path).name if data_path else None,
                               **dict(req.overrides))
            return req.name

        def done(name):
            self.statusBar().showMessage(f"Model {name} trained and added to your models", 10000)
            self.refresh_models(select=name)
            self.models_listed.connect(self._after_train_list)
            self._trained_name = name

        self._start_fg("run", f"Training {req.name}…", fn, on_finished=done,
                       on_progress=self.train_page.on_progress)

    def _after_train_list(self) -> None:
        self.models_listed.disconnect(self._after_train_list)
        self.nav.setCurrentRow(1)
        self.models_page.select(self._trained_name)
        self.training_finished.emit()

    # -- export -----------------------------------------------------------------------------------
    def export(self, kind: str, path: str | None = None) -> str | None:
        exp = self.experiment
        if exp is None:
            self.show_error("There is nothing to save yet: generate cells first.",
                            title="Nothing to save")
            return None
        base = cfg.output_dir()
        stem = safe_filename(f"{exp.model_name}_{exp.mode}")
        if kind == "plot":
            name = self.results_page.current_plot_name()
            if path is None:
                path, _ = QFileDialog.getSaveFileName(
                    self, "Save plot", str(base / f"{stem}_{name}.png"),
                    "PNG image (*.png);;SVG vector image (*.svg)")
            if not path:
                return None
            if not path.lower().endswith((".png", ".svg")):
                path += ".png"
            try:
                self.results_page.current_plot().export(path)
            except Exception as e:  # noqa: BLE001
                self.show_error(f"Could not save the plot to {path}: {e}")
                return None
            return self._exported(path)
        if kind == "de":
            df = self.results_page.de_frame
            if df is None:
                self.show_error("The differential-expression table is not ready yet.")
                return None
            if path is None:
                label = safe_filename(self.results_page.de_label, default="condition")
                path, _ = QFileDialog.getSaveFileName(self, "Save DE table",
                                                      str(base / f"{stem}_DE_{label}.csv"),
                                                      "CSV table (*.csv)")
            if not path:
                return None
            try:
                _atomic_csv(df, path)
            except OSError as e:
                self.show_error(f"Could not write {path}: {e}")
                return None
            return self._exported(path)
        ext = {"h5ad": ".h5ad", "csv": ".csv"}[kind]
        if path is None:
            filt = "AnnData (*.h5ad)" if kind == "h5ad" else "CSV table (*.csv)"
            path, _ = QFileDialog.getSaveFileName(self, "Save cells", str(base / f"{stem}{ext}"),
                                                  filt)
        if not path:
            return None
        if not path.lower().endswith(ext):
            path += ext
        adata, target = exp.adata, path

        def fn(progress, cancel):
            import engine

            Path(target).parent.mkdir(parents=True, exist_ok=True)
            plain_uns(adata)
            if kind == "h5ad":
                engine.write_h5ad(adata, target)
            else:
                engine.write_csv(adata, target)
            return target

        self.jobs.start("export", fn, on_finished=self._exported,
                        on_failed=lambda m, d: self.show_error(m, d))
        return path

    def _exported(self, path: str) -> str:
        cfg.put("output_dir", str(Path(path).parent))
        self.statusBar().showMessage(f"Saved {path}", 8000)
        self.exported.emit(path)
        return path

    # -- help -------------------------------------------------------------------------------------
    def about_text(self) -> str:
        import pyqtgraph
        import PySide6

        import engine

        dev = getattr(self, "device_text", None)
        if dev is None:
            if "torch" in sys.modules:
                try:
                    d = engine.device_info()
                    dev = f"Device: {d['kind']} — {d['name']}"
                except Exception:  # noqa: BLE001
                    dev = "Device: unknown"
            else:
                dev = "Device: detected when the first model loads"
        torch_v = sys.modules["torch"].__version__ if "torch" in sys.modules else "not loaded yet"
        return (f"<h3>{APP_NAME} {__version__}</h3>"
                "<p>In-silico perturbation experiments with a generative model of single-cell "
                "gene expression.</p>"
                f"<p>engine {engine.__version__} · Python {sys.version.split()[0]} · "
                f"PySide6 {PySide6.__version__} · pyqtgraph {pyqtgraph.__version__} · "
                f"torch {torch_v}</p><p>{html.escape(dev)}</p>"
                f"<p>Settings and log: {html.escape(str(cfg.config_dir()))}</p>")

    def about(self) -> None:
        box = QMessageBox(QMessageBox.Icon.NoIcon, f"About {APP_NAME}", self.about_text(),
                          QMessageBox.StandardButton.Ok, self)
        if icon_path().exists():
            box.setIconPixmap(QIcon(str(icon_path())).pixmap(64, 64))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    def show_shortcuts(self) -> None:
        rows = []
        for a in self.actions():
            if not a.shortcut().isEmpty():
                rows.append(f"<tr><td><b>{a.shortcut().toString()}</b></td>"
                            f"<td>{html.escape(a.text().replace('&', ''))}</td></tr>")
        rows += ["<tr><td><b>Ctrl+Return</b></td><td>Generate (on the Compose page)</td></tr>",
                 "<tr><td><b>Ctrl+D</b></td><td>Add condition to experiment</td></tr>"]
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts",
                          "<table cellpadding='3'>" + "".join(rows) + "</table>",
                          QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    def open_log(self) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(cfg.log_path())))


def _warm_imports() -> None:
    """Import now, while a model loads, what generation and its analysis will need: a first
    import inside the generation worker holds the GIL long enough to freeze the window."""
    import importlib

    for name in ("anndata", "pandas", "scipy.sparse", "scipy.stats", "h5py", "engine.export",
                 "engine.analysis", "engine.data.io", "sklearn.decomposition",
                 "sklearn.neighbors"):
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - reported when actually used
            pass


def plain_uns(adata):
    """Make provenance h5ad-safe in place: str subclasses (e.g. torch's TorchVersion) -> str."""
    def fix(v):
        if isinstance(v, str) and type(v) is not str:
            return str(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [fix(x) for x in v]
        return v

    for k in list(adata.uns.keys()):
        adata.uns[k] = fix(adata.uns[k])
    return adata


def _autosave(engine, adata, out: Path | None) -> RunOutput:
    """Write ``adata`` to ``out`` (atomic). A failed save never loses the generated cells: it
    comes back as ``save_error``."""
    import traceback

    plain_uns(adata)
    if out is None:
        return RunOutput(adata)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        engine.write_h5ad(adata, out)
    except (OSError, engine.PerturbStudioError) as e:
        return RunOutput(adata, None, SaveError(str(e), traceback.format_exc()))
    return RunOutput(adata, str(out))


def _atomic_csv(df, path: str) -> None:
    import tempfile

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}-", suffix=".csv", dir=p.parent)
    os.close(fd)
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
