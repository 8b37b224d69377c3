"""Results page: heatmap of the genes that change most, UMAP with real cells, DE table + volcano."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QStringListModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..plots.embedding import EmbeddingPlot
from ..plots.heatmap import HeatmapPlot
from ..plots.volcano import VolcanoPlot
from ..richtext import esc, plain
from ..umap_table import category_order, describe_point, find_gene

DE_COLUMNS = [("gene", "gene"), ("log2fc", "log2 fold change"), ("mean_a", "mean (generated)"),
              ("mean_b", "mean (control)"), ("pval", "p-value"), ("padj", "adjusted p")]


_RED, _BLUE = QColor(178, 24, 43), QColor(33, 102, 172)


class DataFrameModel(QAbstractTableModel):
    """Read-only table over a DE DataFrame, with its own numpy sort and gene filter (a
    QSortFilterProxyModel calls data() ~10^5 times in Python to sort 5,000 rows)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.df = None
        self.cols = [c for c, _ in DE_COLUMNS]
        self.values: list[np.ndarray] = []
        self.text: list[list[str]] = []
        self.rows = np.zeros(0, dtype=np.int64)  # visible row -> frame row
        self.sort_col, self.sort_order, self.pattern = -1, Qt.SortOrder.AscendingOrder, ""
        self.headers: dict[str, str] = {}

    def set_frame(self, df) -> None:
        self.beginResetModel()
        self.df = df.reset_index(drop=True) if df is not None else None
        self.values = [] if df is None else [self.df[c].to_numpy() for c in self.cols]
        self.text = [] if df is None else [[self._fmt(c, v) for v in vals.tolist()]
                                           for c, vals in zip(self.cols, self.values, strict=True)]
        self.genes_lower = np.array([]) if df is None else \
            np.char.lower(self.df["gene"].to_numpy().astype(str))
        self._reorder()
        self.endResetModel()

    def _reorder(self) -> None:
        if self.df is None:
            self.rows = np.zeros(0, dtype=np.int64)
            return
        idx = np.arange(len(self.df))
        if self.pattern:
            idx = idx[np.char.find(self.genes_lower, self.pattern.lower()) >= 0]
        if self.sort_col >= 0:
            v = self.values[self.sort_col][idx]
            o = np.argsort(v, kind="stable")
            if self.sort_order == Qt.SortOrder.DescendingOrder:
                o = o[::-1]
            idx = idx[o]
        self.rows = idx

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        self.layoutAboutToBeChanged.emit()
        self.sort_col, self.sort_order = column, order
        self._reorder()
        self.layoutChanged.emit()

    def set_filter(self, text: str) -> None:
        self.beginResetModel()
        self.pattern = text.strip()
        self._reorder()
        self.endResetModel()

    def gene_at(self, row: int) -> str | None:
        return str(self.text[0][self.rows[row]]) if 0 <= row < len(self.rows) else None

    @staticmethod
    def _fmt(col: str, v) -> str:
        if isinstance(v, float):
            return f"{v:.2e}" if col in ("pval", "padj") else (f"{v:+.3f}" if col == "log2fc"
                                                               else f"{v:.3f}")
        return str(v)

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802
        return len(self.cols)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if self.df is None or not index.isValid():
            return None
        r, c = int(self.rows[index.row()]), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self.text[c][r]
        if role == Qt.ItemDataRole.UserRole:
            v = self.values[c][r]
            return float(v) if c > 0 else str(v)
        if role == Qt.ItemDataRole.TextAlignmentRole and c > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and self.cols[c] == "log2fc":
            return _RED if self.values[c][r] > 0 else _BLUE
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.headers.get(self.cols[section], DE_COLUMNS[section][1])
        if role == Qt.ItemDataRole.ToolTipRole and orientation == Qt.Orientation.Horizontal:
            return {"log2fc": "log2 ratio of geometric means of (1 + normalised expression); "
                              "positive = higher in generated cells",
                    "padj": "Welch t-test p-value, Benjamini-Hochberg adjusted",
                    }.get(self.cols[section], DE_COLUMNS[section][1])
        return None


class ResultsPanel(QWidget):
    export_requested = Signal(str)      # 'h5ad' | 'csv' | 'plot' | 'de'
    de_requested = Signal(str)          # condition label
    color_requested = Signal(str)       # 'condition' | 'cell type' | 'source' | 'gene:NAME'

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = QLabel("No results yet. Compose an experiment and press <b>Generate</b>.")
        self.header.setWordWrap(True)
        self.header.setTextFormat(Qt.TextFormat.RichText)  # names in it are escaped
        self.export_h5ad = QPushButton("Save cells (h5ad)…")
        self.export_h5ad.setToolTip("Save the generated cells with provenance as .h5ad (Ctrl+S)")
        self.export_csv = QPushButton("Save counts (CSV)…")
        self.export_csv.setToolTip("Save the generated counts as a cells × genes CSV table")
        self.export_plot = QPushButton("Save plot…")
        self.export_plot.setToolTip("Save the plot on the current tab as PNG or SVG (Ctrl+P)")
        self.export_de = QPushButton("Save DE table…")
        self.export_de.setToolTip("Save the differential-expression table as CSV")
        for b, kind in ((self.export_h5ad, "h5ad"), (self.export_csv, "csv"),
                        (self.export_plot, "plot"), (self.export_de, "de")):
            b.clicked.connect(lambda _=False, k=kind: self.export_requested.emit(k))
        top = QHBoxLayout()
        top.addWidget(self.header, 1)
        for b in (self.export_h5ad, self.export_csv, self.export_plot, self.export_de):
            top.addWidget(b)

        # heatmap tab
        self.heatmap = HeatmapPlot()
        self.heatmap.setToolTip("Mean change of each gene against the matching control "
                                "(red = up, blue = down)")
        self.heat_note = plain(QLabel())
        self.heat_note.setWordWrap(True)
        heat = QWidget()
        hl = QVBoxLayout(heat)
        hl.addWidget(self.heat_note)
        hl.addWidget(self.heatmap, 1)

        # UMAP tab
        self.umap = EmbeddingPlot()
        self.umap.setToolTip("Each dot is a cell. Generated and real cells embedded together: "
                             "good generated cells sit with the real cells of their condition.")
        self.color_by = QComboBox()
        self.color_by.addItems(["condition", "cell type", "source"])
        self.color_by.setToolTip("What the colours show")
        self.color_by.currentTextChanged.connect(lambda t: self.color_requested.emit(t))
        self.color_requested.connect(self.color_umap)
        self.gene = QLineEdit()
        self.gene.setPlaceholderText("colour by gene, e.g. ISG15")
        self.gene.setToolTip("Type a gene and press Enter to colour cells by its expression "
                             "(Ctrl+F)")
        self.gene.setClearButtonEnabled(True)
        self._gene_model = QStringListModel([])
        comp = QCompleter(self._gene_model, self)
        comp.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        comp.setFilterMode(Qt.MatchFlag.MatchContains)
        self.gene.setCompleter(comp)
        self.gene.returnPressed.connect(self._gene_entered)
        comp.activated.connect(lambda _t: self._gene_entered())
        self.gene_msg = plain(QLabel())  # quotes the gene typed
        self.gene_msg.setStyleSheet("color:#b00020")
        self.umap_status = plain(QLabel("The UMAP is computed in the background after "
                                        "generation."))  # quotes the data file's name
        self.umap_status.setWordWrap(True)
        ur = QHBoxLayout()
        ur.addWidget(QLabel("Colour by"))
        ur.addWidget(self.color_by)
        ur.addSpacing(16)
        ur.addWidget(self.gene, 1)
        ur.addWidget(self.gene_msg)
        umap = QWidget()
        ul = QVBoxLayout(umap)
        ul.addLayout(ur)
        ul.addWidget(self.umap_status)
        ul.addWidget(self.umap, 1)

        # DE tab
        self.compare = QComboBox()
        self.compare.setToolTip("Which condition to compare with its control")
        self.compare.currentTextChanged.connect(self._compare_changed)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("filter genes")
        self.filter.setToolTip("Show only genes whose name contains this text")
        self.filter.setClearButtonEnabled(True)
        self.de_model = DataFrameModel(self)
        self.proxy = self.de_model  # sorting and filtering happen in the model itself
        self.filter.textChanged.connect(self.de_model.set_filter)
        self.table = QTableView()
        self.table.setModel(self.de_model)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)  # ResizeToContents scans
        hh.setDefaultSectionSize(118)                                  # every row: too slow
        hh.setStretchLastSection(True)
        self.table.setAlternatingRowColors(True)
        self.table.setToolTip("Click a column header to sort; click a gene to find it in the "
                              "volcano plot")
        self.table.selectionModel().currentRowChanged.connect(self._row_selected)
        self.volcano = VolcanoPlot()
        self.volcano.setToolTip("Each dot is a gene: right = higher in generated cells, up = "
                                "more significant. Click a dot to find it in the table.")
        self.volcano.gene_clicked.connect(self.select_gene)
        self.de_note = plain(QLabel())  # quotes condition labels
        self.de_note.setWordWrap(True)
        dr = QHBoxLayout()
        dr.addWidget(QLabel("Compare"))
        dr.addWidget(self.compare, 1)
        dr.addWidget(QLabel("vs its control"))
        dr.addSpacing(16)
        dr.addWidget(self.filter)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.volcano)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([640, 760])
        for col, width in enumerate((100, 120, 135, 125, 90, 90)):
            self.table.setColumnWidth(col, width)
        self.table.verticalHeader().setDefaultSectionSize(22)
        de = QWidget()
        dl = QVBoxLayout(de)
        dl.addLayout(dr)
        dl.addWidget(self.de_note)
        dl.addWidget(split, 1)

        self.tabs = QTabWidget()
        self.tabs.addTab(heat, "Heatmap")
        self.tabs.addTab(umap, "UMAP")
        self.tabs.addTab(de, "Differential expression")
        self.tabs.setTabToolTip(0, "Genes that change most, each condition vs its control")
        self.tabs.setTabToolTip(1, "Generated cells embedded with real cells")
        self.tabs.setTabToolTip(2, "Gene-by-gene comparison with the control, sortable")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(top)
        lay.addWidget(self.tabs, 1)
        self.de_frame = None
        self.de_label = ""
        self.embedding = None     # app.messages.Embedding shown in the UMAP
        self._umap_gene = None    # (gene, values per point) while coloured by a gene
        self.set_experiment(None)

    # -- experiment -----------------------------------------------------------------------------
    def set_experiment(self, exp) -> None:
        self.exp = exp
        self.embedding = self._umap_gene = None
        for b in (self.export_h5ad, self.export_csv, self.export_plot, self.export_de):
            b.setEnabled(exp is not None)
        self.compare.blockSignals(True)
        self.compare.clear()
        if exp is None:
            self.header.setText("No results yet. Compose an experiment and press "
                                "<b>Generate</b>, or perturb your own cells.")
            self.heatmap.clear()
            self.umap.clear()
            self.volcano.clear()
            self.de_model.set_frame(None)
            self.compare.blockSignals(False)
            return
        saved = f"<br><span style='color:#555'>Saved to {esc(exp.saved_to)}</span>" \
            if exp.saved_to else ""
        self.header.setText(f"<b>{esc(exp.describe())}</b>{saved}")
        self.compare.addItems(exp.labels)
        self.compare.blockSignals(False)
        self.heat_note.setText("Computing the genes that change most…")
        self.umap_status.setText("Computing the UMAP in the background…")
        self.de_note.setText("Computing differential expression…")
        self.umap.clear()
        self.volcano.clear()
        self.de_model.set_frame(None)
        self._gene_model.setStringList(sorted(map(str, exp.adata.var_names)))

    def set_heatmap(self, genes, matrix, labels, *, note: str = "") -> None:
        # few conditions: genes as rows, conditions as columns (every label readable);
        # many conditions (e.g. all single knockouts): conditions as rows, genes as columns
        title = "Markers: each population vs all other generated cells" \
            if self.exp is not None and self.exp.only_controls else "Change vs matching control"
        if len(labels) <= 8:
            self.heatmap.set_data(np.asarray(matrix).T, genes, labels, title=title)
        else:
            self.heatmap.set_data(np.asarray(matrix), labels, genes,
                                  title=title + " (hover for gene names)")
        self.heat_note.setText(note or (f"The {len(genes)} genes that change most across "
                                        f"{len(labels)} condition(s). Colour: mean log "
                                        "expression minus the control's (red up, blue down)."))

    def set_de(self, label: str, df) -> None:
        self.de_frame = df
        self.de_label = label
        self.de_model.sort_col = -1
        perturb = self.exp is not None and self.exp.mode == "perturb"
        self.de_model.headers = {"mean_a": "mean (perturbed)", "mean_b": "mean (your cells)"} \
            if perturb else {}
        self.de_model.set_frame(df)
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.volcano.set_table(df["gene"], df["log2fc"], df["padj"], title=label)
        n_sig = int(((df["padj"] < 0.05) & (df["log2fc"].abs() >= 1)).sum())
        ctrl = "your original cells" if self.exp is not None and self.exp.mode == "perturb" \
            else "all other generated cells" if self.exp is not None and self.exp.only_controls \
            else "the generated control"
        self.de_note.setText(f"{label} vs {ctrl}: {len(df):,} genes, {n_sig:,} with |log2 fold "
                             "change| ≥ 1 and adjusted p < 0.05 (Welch t-test, BH). Sorted by "
                             "|log2 fold change|.")
        if self.compare.currentText() != label:
            self.compare.blockSignals(True)
            self.compare.setCurrentText(label)
            self.compare.blockSignals(False)

    def set_umap_status(self, text: str) -> None:
        self.umap_status.setText(text)

    # -- UMAP -----------------------------------------------------------------------------------
    def set_embedding(self, emb, data_name: str = "") -> None:
        """Show the UMAP of ``emb`` (app.messages.Embedding); ``data_name``: the real cells'
        file."""
        self.embedding = emb
        self.umap.set_coords(emb.coords)
        self.umap.describe = self.describe_cell
        n_gen, n_real = emb.n_generated, emb.n_real
        self.set_umap_status(
            f"{n_gen:,} generated cells" + (f" with {n_real:,} real cells from "
                                             f"{data_name or 'your data'}" if n_real else
                                             " (open a dataset to compare with real cells)")
            + ". Hover over a dot for details.")
        self.color_umap(self.color_by.currentText())

    def describe_cell(self, i: int) -> str:
        if self.embedding is None:
            return ""
        return describe_point(self.embedding.meta, i, self._umap_gene)

    def color_umap(self, what: str) -> None:
        """Colour the points by 'condition', 'cell type', 'source' or 'gene:NAME'."""
        if self.embedding is None:
            return
        plot = self.umap
        if what.startswith("gene:"):
            from engine.analysis import gene_values

            parts = self.embedding.parts
            var_names = self.exp.adata.var_names if self.exp is not None else []
            gene = find_gene(what[5:], parts, var_names)
            if gene is None:
                self.gene_msg.setText(f"{what[5:]}: not among the genes")
                return
            vals = np.concatenate([gene_values(a, gene) for a in parts.values()])
            self._umap_gene = (gene, vals)
            self.gene_msg.setText("")
            plot.color_by_value(vals, title=f"{gene} (log normalised expression)")
            return
        self._umap_gene = None
        col = {"condition": "condition", "cell type": "cell type", "source": "source"}[what]
        values = self.embedding.meta[col].astype(str).to_numpy()
        order, grey = category_order(values, col)
        if col == "condition":
            plot.color_by_category(values, order=order, grey=grey,
                                   title="Generated cells by condition (real cells in grey)"
                                   if grey else "Generated cells by condition")
        else:
            plot.color_by_category(values, order=order, title=f"Cells by {col}")

    def _compare_changed(self, label: str) -> None:
        if label and self.exp is not None:
            self.de_note.setText(f"Computing differential expression for {label}…")
            self.de_requested.emit(label)

    def _gene_entered(self) -> None:
        g = self.gene.text().strip()
        if not g:
            self.gene_msg.setText("")
            self.color_requested.emit(self.color_by.currentText())
            return
        self.color_requested.emit("gene:" + g)

    def _row_selected(self, current, _prev) -> None:
        if not current.isValid():
            return
        gene = self.de_model.gene_at(current.row())
        if gene:
            self.volcano.highlight_gene(gene)

    def select_gene(self, gene: str) -> None:
        self.filter.clear()
        hits = np.flatnonzero(self.de_model.values[0][self.de_model.rows] == gene) \
            if self.de_model.df is not None else []
        if len(hits):
            r = int(hits[0])
            self.table.selectRow(r)
            self.table.scrollTo(self.de_model.index(r, 0))
        self.volcano.highlight_gene(gene)

    def current_plot(self):
        return {0: self.heatmap, 1: self.umap, 2: self.volcano}[self.tabs.currentIndex()]

    def current_plot_name(self) -> str:
        return {0: "heatmap", 1: "umap", 2: "volcano"}[self.tabs.currentIndex()]


