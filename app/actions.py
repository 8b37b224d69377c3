"""The window's actions, menus and toolbar (each action with its shortcut and tooltip)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence


def _act(win, text: str, slot, shortcut=None, tip: str = "") -> QAction:
    a = QAction(text, win)
    if shortcut is not None:
        a.setShortcut(QKeySequence(shortcut))
    if tip:
        a.setStatusTip(tip)
        a.setToolTip(f"{tip} ({QKeySequence(shortcut).toString()})" if shortcut else tip)
    a.triggered.connect(slot)
    win.addAction(a)
    return a


def build_actions(win, pages) -> None:
    """Create ``win.act_*``, ``win.recent_menu`` and ``win.page_actions`` (one per entry of
    ``pages``: key, title, tip), the menu bar and the toolbar of the main window ``win``."""
    def A(*args):  # noqa: N802
        return _act(win, *args)

    win.act_open = A("&Open dataset…", win.open_dialog, QKeySequence.StandardKey.Open,
                     "Open an h5ad, CSV/TSV or 10x file")
    win.act_open_folder = A("Open 10x &folder…", win.open_folder_dialog, None,
                            "Open a 10x folder (matrix.mtx, features.tsv, barcodes.tsv)")
    win.act_save_h5ad = A("&Save cells as h5ad…", lambda: win.export("h5ad"),
                          QKeySequence.StandardKey.Save, "Save the generated cells (h5ad)")
    win.act_save_csv = A("Save counts as &CSV…", lambda: win.export("csv"), None,
                         "Save the generated counts as a CSV table")
    win.act_save_plot = A("Save &plot…", lambda: win.export("plot"), "Ctrl+P",
                          "Save the figure on the Results page as SVG, PDF or PNG")
    win.act_save_de = A("Save &effect table…", lambda: win.export("de"), None,
                        "Save the effect table (per gene: effect, 90% interval, baseline, real "
                        "effect) as CSV")
    win.act_save_session = A("Save sess&ion…", win.save_session_dialog, "Ctrl+Shift+S",
                             "Save every experiment of this session (cells, settings, views) "
                             "in one folder")
    win.act_open_session = A("Open sessio&n…", win.open_session_dialog, "Ctrl+Shift+O",
                             "Open a saved session folder")
    win.act_open_autosaved = A("Open the &autosaved session", win.open_autosaved_session, None,
                               "Open the session kept automatically in the output folder")
    win.act_copy_command = A("Copy as co&mmand", win.copy_command, "Ctrl+Shift+C",
                             "Copy the perturb-studio command lines that reproduce the "
                             "experiment shown")
    win.act_outdir = A("Output &folder…", win.choose_output_dir, None,
                       "Folder where results are saved")
    win.act_autosave = A("Save every result automatically", win.toggle_autosave, None,
                         "Write each finished experiment to the output folder as h5ad")
    win.act_autosave.setCheckable(True)
    win.act_quit = A("&Quit", win.close, QKeySequence.StandardKey.Quit, "Quit")
    win.act_import = A("&Import model folder…", win.import_model_dialog, "Ctrl+I",
                       "Add a model folder to your models")
    win.act_refresh = A("&Refresh model list", win.refresh_models, "F5",
                        "Look for new models on disk")
    win.act_generate = A("&Generate", win.compose_page._generate, None,
                         "Generate the composed experiment")
    win.act_generate.setShortcut(QKeySequence("Ctrl+G"))
    win.act_cancel = A("&Cancel", win.cancel_running, QKeySequence(Qt.Key.Key_Escape),
                       "Stop the running job")
    win.act_find = A("Find gene in UMAP", win.focus_gene, QKeySequence.StandardKey.Find,
                     "Colour the UMAP by a gene")
    win.act_about = A("&About Perturb Studio", win.about, QKeySequence.StandardKey.HelpContents,
                      "Versions and device")
    win.act_log = A("Open &log file", win.open_log, None,
                    "Open the log file (useful when reporting a problem)")
    win.act_shortcuts = A("&Keyboard shortcuts", win.show_shortcuts, None,
                          "List the keyboard shortcuts")
    mb = win.menuBar()
    m = mb.addMenu("&File")
    m.addAction(win.act_open)
    m.addAction(win.act_open_folder)
    win.recent_menu = m.addMenu("Open &recent")
    m.addSeparator()
    m.addAction(win.act_open_session)
    m.addAction(win.act_open_autosaved)
    m.addAction(win.act_save_session)
    m.addSeparator()
    for a in (win.act_save_h5ad, win.act_save_csv, win.act_save_plot, win.act_save_de,
              win.act_copy_command):
        m.addAction(a)
    m.addSeparator()
    m.addAction(win.act_outdir)
    m.addAction(win.act_autosave)
    m.addSeparator()
    m.addAction(win.act_quit)
    m = mb.addMenu("&Model")
    m.addAction(win.act_import)
    m.addAction(win.act_refresh)
    m = mb.addMenu("&Run")
    m.addAction(win.act_generate)
    m.addAction(win.act_cancel)
    m = mb.addMenu("&View")
    win.page_actions = []
    for i, (_key, title, tip) in enumerate(pages):
        a = A(title, lambda _=False, r=i: win.nav.setCurrentRow(r), f"Ctrl+{i + 1}", tip)
        m.addAction(a)
        win.page_actions.append(a)
    m.addSeparator()
    m.addAction(win.act_find)
    m = mb.addMenu("&Help")
    m.addAction(win.act_shortcuts)
    m.addAction(win.act_log)
    m.addAction(win.act_about)
    tb = win.addToolBar("Main")
    tb.setObjectName("main-toolbar")
    tb.setMovable(False)
    tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    for a in (win.act_open, win.act_import, win.act_generate, win.act_cancel,
              win.act_save_h5ad, win.act_save_plot):
        tb.addAction(a)
