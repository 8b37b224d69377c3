"""Data page: open a dataset, see what is in it, and map its columns to roles."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..richtext import esc, plain, tip

NONE = "(none)"

ROLES = [
    ("cell_type_key", "Cell type", "Column that says which cell type (or cell line) each cell is"),
    ("perturbation_key", "Perturbation", "Column naming what was perturbed in each cell "
     "(gene, drug, 'A+B' for combinations, or the control label)"),
    ("perturbation_type_key", "Perturbation type", "Column with the kind of perturbation "
     "(knockout, CRISPRa, CRISPRi, drug)"),
    ("dose_key", "Dose", "Column with the dose of a drug (numbers)"),
]
FILE_FILTER = ("Single-cell data (*.h5ad *.csv *.tsv *.txt *.csv.gz *.tsv.gz *.h5 *.mtx "
               "*.mtx.gz);;All files (*)")


class DataPanel(QWidget):
    open_requested = Signal()
    open_path = Signal(str)
    open_folder_requested = Signal()
    schema_changed = Signal(object)  # engine Schema

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.adata = None
        self.path: str | None = None
        self._schema_ok = False

        head = QLabel("<h2>Data</h2>")
        self.intro = QLabel("Open a dataset (h5ad, CSV/TSV, 10x .h5 or a 10x folder) to compare "
                            "generated cells with real ones, to perturb your own control cells, "
                            "or to train a model. You can also drop a file onto the window.")
        self.intro.setWordWrap(True)
        self.open_btn = QPushButton("Open dataset…")
        self.open_btn.setToolTip("Open an h5ad, CSV/TSV or 10x .h5 file (Ctrl+O)")
        self.open_btn.clicked.connect(self.open_requested)
        self.folder_btn = QPushButton("Open 10x folder…")
        self.folder_btn.setToolTip("Open a folder with matrix.mtx, features.tsv and barcodes.tsv")
        self.folder_btn.clicked.connect(self.open_folder_requested)
        self.recent = QListWidget()
        self.recent.setToolTip("Recently opened datasets: double-click to open again")
        self.recent.setMaximumHeight(110)
        self.recent.itemActivated.connect(lambda it: self.open_path.emit(it.data(Qt.ItemDataRole.UserRole)))

        # summary
        self.summary = QLabel("No dataset loaded.")  # rich text: names in it are escaped
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._summary_html = "No dataset loaded."  # of the dataset in use, shown again after
        #                                            a failed or cancelled load
        # why the last file could not be opened (the engine's message, as plain text)
        self.load_error = plain(QLabel())
        self.load_error.setObjectName("load-error")
        self.load_error.setWordWrap(True)
        self.load_error.setStyleSheet("color: #b00020;")
        self.load_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.load_error.hide()
        self.columns = QTableWidget(0, 4)
        self.columns.setHorizontalHeaderLabels(["column", "kind", "values", "most common values"])
        self.columns.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.columns.verticalHeader().hide()
        self.columns.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.columns.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.columns.setToolTip("The per-cell annotation columns (obs) found in the file")
        self.columns.setAlternatingRowColors(True)

        # role form
        roles_box = QGroupBox("What the columns mean")
        form = QFormLayout(roles_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.role_combos: dict[str, QComboBox] = {}
        self.role_msgs: dict[str, QLabel] = {}
        for key, label, help_text in ROLES:
            combo = QComboBox()
            combo.setToolTip(help_text)
            combo.currentIndexChanged.connect(self._changed)
            self.role_combos[key] = combo
            form.addRow(label, self._with_msg(key, combo))
        self.context = QListWidget()
        self.context.setToolTip("Context columns (e.g. organism, tissue, donor), broadest first. "
                                "Tick the ones that describe where the cells come from.")
        self.context.setMaximumHeight(90)
        self.context.itemChanged.connect(self._changed)
        form.addRow("Context levels", self._with_msg("context_keys", self.context))
        self.control = QComboBox()
        self.control.setEditable(True)
        self.control.setToolTip("The value of the perturbation column that marks control "
                                "(unperturbed) cells")
        self.control.currentTextChanged.connect(self._changed)
        form.addRow("Control label", self._with_msg("control_label", self.control))
        self.drop = QLineEdit()
        self.drop.setPlaceholderText("e.g. unassigned, doublet")
        self.drop.setToolTip("Perturbation values of cells to leave out, separated by commas")
        self.drop.editingFinished.connect(self._changed)
        form.addRow("Leave out", self._with_msg("drop_labels", self.drop))
        self.general = QLabel()
        self.general.setWordWrap(True)
        self.general.setTextFormat(Qt.TextFormat.RichText)
        form.addRow(self.general)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(head)
        ll.addWidget(self.intro)
        btns = QHBoxLayout()
        btns.addWidget(self.open_btn)
        btns.addWidget(self.folder_btn)
        btns.addStretch(1)
        ll.addLayout(btns)
        ll.addWidget(QLabel("<b>Recent files</b>"))
        ll.addWidget(self.recent)
        ll.addWidget(self.load_error)
        ll.addWidget(self.summary)
        ll.addWidget(self.columns, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(roles_box)
        rl.addStretch(1)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(split)
        self.splitter = split
        self._set_form_enabled(False)

    def _with_msg(self, key: str, widget: QWidget) -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(1)
        v.addWidget(widget)
        msg = QLabel()  # rich text: the messages in it are escaped
        msg.setWordWrap(True)
        msg.setTextFormat(Qt.TextFormat.RichText)
        msg.hide()
        v.addWidget(msg)
        self.role_msgs[key] = msg
        return box

    def _set_form_enabled(self, on: bool) -> None:
        for w in (*self.role_combos.values(), self.context, self.control, self.drop):
            w.setEnabled(on)

    # -- recent files ---------------------------------------------------------------------------
    def set_recent(self, files: list[str]) -> None:
        self.recent.clear()
        for f in files:
            item = QListWidgetItem(Path(f).name + "   —   " + str(Path(f).parent))
            item.setData(Qt.ItemDataRole.UserRole, f)
            item.setToolTip(tip(f))
            self.recent.addItem(item)

    # -- dataset --------------------------------------------------------------------------------
    def set_loading(self, path: str) -> None:
        self.summary.setText(f"Loading <b>{esc(Path(path).name)}</b>…")

    def restore_summary(self) -> None:
        """Show the summary of the dataset in use again (after a cancelled load)."""
        self.summary.setText(self._summary_html)

    def set_load_error(self, path: str, message: str) -> None:
        """A file could not be opened: say why, and what stays in use."""
        kept = (f"\n{Path(self.path).name} (opened before) is still the dataset in use."
                if self.adata is not None and self.path else "\nNo dataset is loaded.")
        self.load_error.setText(f"Could not open {Path(path).name}: {message}{kept}")
        self.load_error.show()
        self.restore_summary()

    def set_dataset(self, adata, summary, schema, path: str) -> None:
        self.adata, self.path = adata, path
        self.load_error.hide()
        self.load_error.setText("")
        counts = (f"raw counts found in <code>{esc(summary.counts_source)}</code>"
                  if summary.counts_source else
                  f"<span style='color:#b00020'>no raw counts: {esc(summary.counts_problem)}"
                  "</span>")
        self._summary_html = (f"<b>{esc(Path(path).name)}</b>: {summary.n_cells:,} cells × "
                              f"{summary.n_genes:,} genes; {counts}; "
                              f"{len(summary.columns)} annotation columns.")
        self.summary.setText(self._summary_html)
        self.columns.setRowCount(len(summary.columns))
        for i, col in enumerate(summary.columns):
            top = ", ".join(f"{v} ({n:,})" for v, n in col.top[:6])
            for j, text in enumerate((col.name, col.kind, f"{col.n_unique:,}", top)):
                item = QTableWidgetItem(text)
                item.setToolTip(tip(text))
                self.columns.setItem(i, j, item)
        self.columns.resizeColumnsToContents()
        self.columns.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        names = [c.name for c in summary.columns]
        self._set_form_enabled(True)
        for combo in self.role_combos.values():
            with QSignalBlocker(combo):
                combo.clear()
                combo.addItem(NONE)
                combo.addItems(names)
        with QSignalBlocker(self.context):
            self.context.clear()
            for n in names:
                it = QListWidgetItem(n)
                it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                it.setCheckState(Qt.CheckState.Unchecked)
                self.context.addItem(it)
        self.set_schema(schema)

    def clear(self) -> None:
        self.adata, self.path = None, None
        self._summary_html = "No dataset loaded."
        self.summary.setText(self._summary_html)
        self.columns.setRowCount(0)
        self._set_form_enabled(False)

    def set_schema(self, schema) -> None:
        widgets = (*self.role_combos.values(), self.context, self.control, self.drop)
        blockers = [QSignalBlocker(w) for w in widgets]
        for key, combo in self.role_combos.items():
            v = getattr(schema, key)
            combo.setCurrentText(v if v else NONE)
        for i in range(self.context.count()):
            it = self.context.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in schema.context_keys
                             else Qt.CheckState.Unchecked)
        self._fill_control_values()
        self.control.setCurrentText(schema.control_label)
        self.drop.setText(", ".join(schema.drop_labels))
        del blockers
        self._changed()

    def _fill_control_values(self) -> None:
        col = self.role_combos["perturbation_key"].currentText()
        current = self.control.currentText()
        with QSignalBlocker(self.control):
            self.control.clear()
            if self.adata is not None and col != NONE and col in self.adata.obs:
                vc = self.adata.obs[col].astype(str).value_counts()
                self.control.addItems([str(v) for v in vc.index[:200]])
            self.control.setCurrentText(current)

    def schema(self):
        from engine.data.schema import Schema

        def val(key):
            t = self.role_combos[key].currentText()
            return None if t in (NONE, "") else t

        ctx = tuple(self.context.item(i).text() for i in range(self.context.count())
                    if self.context.item(i).checkState() == Qt.CheckState.Checked)
        drops = tuple(s.strip() for s in self.drop.text().split(",") if s.strip())
        return Schema(cell_type_key=val("cell_type_key"), perturbation_key=val("perturbation_key"),
                      perturbation_type_key=val("perturbation_type_key"), dose_key=val("dose_key"),
                      context_keys=ctx, control_label=self.control.currentText().strip() or
                      "control", drop_labels=drops)

    def _changed(self, *_a) -> None:
        if self.adata is None:
            return
        sender = self.sender()
        if sender is self.role_combos["perturbation_key"]:
            self._fill_control_values()
        from engine.data.schema import validate_schema

        schema = self.schema()
        try:
            issues = validate_schema(self.adata, schema)
        except Exception as e:  # noqa: BLE001 - show, never crash the form
            issues = [type("I", (), {"field": "", "message": str(e), "severity": "error"})()]
        for msg in self.role_msgs.values():
            msg.hide()
            msg.setText("")
        general = []
        for issue in issues:
            key = _issue_key(issue.field)
            colour = "#b00020" if issue.severity == "error" else "#a15c00"
            mark = "✖" if issue.severity == "error" else "⚠"
            html = f"<span style='color:{colour}'>{mark} {esc(issue.message)}</span>"
            if key in self.role_msgs:
                lab = self.role_msgs[key]
                lab.setText((lab.text() + "<br>" if lab.text() else "") + html)
                lab.show()
            else:
                general.append(html)
        self._schema_ok = not any(i.severity == "error" for i in issues)
        if self._schema_ok:
            general.append("<span style='color:#1b5e20'>✔ Columns mapped; the dataset can be "
                           "used for training and for perturbing its control cells.</span>")
        self.general.setText("<br>".join(general))
        self.schema_changed.emit(schema)

    @property
    def schema_ok(self) -> bool:
        return self._schema_ok


def _issue_key(field: str) -> str:
    f = (field or "").split("[")[0]
    aliases = {"cell_type": "cell_type_key", "perturbation": "perturbation_key",
               "perturbation_type": "perturbation_type_key", "dose": "dose_key",
               "context": "context_keys"}
    return aliases.get(f, f)
