"""The main window's session actions: File > Save session / Open session / Open the autosaved
session, the view state a session keeps, and Copy as command (a mixin of
app.main_window.MainWindow)."""

from __future__ import annotations

from pathlib import Path

from . import dialogs
from . import settings as cfg


class SessionActionsMixin:
    # -- sessions -----------------------------------------------------------------------------------
    def view_state(self) -> dict:
        r = self.results_page
        return {"tab": r.current_plot_name(), "color_by": r.color_by.currentText(),
                "gene": r.gene.text(), "compare": r.compare.currentText(),
                "genes": {k: w.text() for k, w in r.view_genes.items()},
                "gene_set": [r.gs_collection.currentText(), r.gs_set.currentText()],
                "heat_extras": r.heat_extras.isChecked(), "dpi": r.dpi.value()}

    def apply_view_state(self, v: dict) -> None:
        from .views import KINDS

        r = self.results_page
        if not isinstance(v, dict):
            return
        for k, text in (v.get("genes") or {}).items():
            if k in r.view_genes:
                r.view_genes[k].setText(str(text))
        if v.get("color_by") in ("condition", "cell type", "source"):
            r.color_by.setCurrentText(v["color_by"])
        if isinstance(v.get("dpi"), int):
            r.dpi.setValue(v["dpi"])
        r.heat_extras.setChecked(bool(v.get("heat_extras")))
        gs = v.get("gene_set") or []
        if len(gs) == 2 and gs[0]:
            r._load_genesets()
            r.gs_collection.setCurrentText(str(gs[0]))
            r.gs_set.setCurrentText(str(gs[1]))
        self._pending_compare = v.get("compare") or None   # once the effects are shown
        names = ["heatmap", "umap", "effects", *KINDS]
        if v.get("tab") in names:
            r.tabs.setCurrentIndex(names.index(v["tab"]))

    def save_session_dialog(self) -> None:
        if not self.session.history:
            self.show_error("There is nothing to save yet: generate cells first.",
                            title="Nothing to save")
            return
        start = self.session.session_dir or str(cfg.save_dir())
        folder = dialogs.ask_folder(self, "Save session in folder", start)
        if folder:
            self.save_session(folder)

    def save_session(self, folder: str) -> None:
        self.controller.save_session(folder, self.view_state())

    def open_session_dialog(self) -> None:
        folder = dialogs.ask_folder(self, "Open session folder", str(cfg.save_dir()))
        if folder:
            self.open_session(folder)

    def open_session(self, folder: str) -> None:
        self.controller.open_session(folder)

    def open_autosaved_session(self) -> None:
        folder = self.controller.session_autosave_dir()
        if not (folder / "session.json").exists():
            self.show_error(f"No session was saved automatically in {folder} yet.",
                            title="No autosaved session")
            return
        self.open_session(str(folder))

    def _session_opened(self, manifest) -> None:
        self.apply_view_state(manifest.view)
        path = manifest.dataset_path
        if path and Path(path).exists() and self.session.data_path != path:
            self.controller.load_dataset(path, show=False)  # the real cells compared with
        ro = [e for e in manifest.experiments if e.read_only]
        if ro:
            self.statusBar().showMessage(
                f"{len(ro)} experiment(s) opened read-only: {ro[0].read_only}", 15000)
        self.session_opened.emit()

    def copy_command(self) -> str | None:
        """Put the command lines that reproduce the shown experiment on the clipboard."""
        from PySide6.QtWidgets import QApplication

        from .session_io import commands

        exp = self.session.experiment
        if exp is None:
            self.show_error("There is no experiment to copy yet.", title="Nothing to copy")
            return None
        text = "\n".join(commands(exp, data_path=self.session.data_path))
        QApplication.clipboard().setText(text)
        self.statusBar().showMessage("Copied the commands that reproduce this experiment", 6000)
        return text

    def _restore_compare(self) -> None:
        """After a session opens, the Effects tab compares the condition it compared then."""
        label = getattr(self, "_pending_compare", None)
        exp = self.session.experiment
        if not label or exp is None or label not in exp.labels:
            return
        self._pending_compare = None
        if self.results_page.compare.currentText() != label:
            self.results_page.compare.setCurrentText(label)

