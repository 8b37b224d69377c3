"""Results page: the history of experiments on the left; on the right the heatmap of the genes
that change most (with baselines and real cells), UMAP with real cells, the effect table + effect
plot of one condition (app.effect_table), and the figure views of app.views (dot plot, violins,
per-cell heatmap, gene-set scores, comparisons, sweeps). Every view exports through matplotlib
(app.figures) as SVG, PDF or PNG at the dpi chosen here."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QStringListModel, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..plots.effect_plot import EffectPlot
from ..plots.embedding import EmbeddingPlot
from ..plots.heatmap import HeatmapPlot
from ..richtext import esc, plain
from ..umap_table import category_order, describe_point, find_gene
from .effect_model import EffectTableModel
from .figure_tabs import FigureTabsMixin
from .history import HistoryMixin

#: Column widths of the effect table by kind of column (pixels).
WIDTHS = {"text": 76, "lfc": 96, "interval": 112, "yesno": 80, "num": 80}
WARN = "#a15c00"


class ResultsPanel(FigureTabsMixin, HistoryMixin, QWidget):
    export_requested = Signal(str)      # 'h5ad' | 'csv' | 'plot' | 'de'
    de_requested = Signal(str)          # condition label
    color_requested = Signal(str)       # 'condition' | 'cell type' | 'source' | 'gene:NAME'
    view_requested = Signal(str, dict)  # app.views kind, its parameters
    geneset_umap_requested = Signal(object)   # engine.genesets.GeneSet: colour the UMAP by it
    history_selected = Signal(int)      # experiment id (app.session.HistoryEntry.id)
    history_renamed = Signal(int, str)
    history_deleted = Signal(int)
    copy_command_requested = Signal()

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
        self.export_plot.setToolTip("Save the figure on the current tab as vector SVG or PDF, "
                                    "or as PNG at the dpi beside (Ctrl+P)")
        self.dpi = QSpinBox()
        self.dpi.setRange(72, 1200)
        self.dpi.setSingleStep(50)
        self.dpi.setValue(300)
        self.dpi.setSuffix(" dpi")
        self.dpi.setToolTip("Resolution of figures saved as PNG (SVG and PDF are vectors)")
        self.copy_cmd = QPushButton("Copy as command")
        self.copy_cmd.setToolTip("Copy the perturb-studio command lines that reproduce this "
                                 "experiment (same model, conditions, seed and settings)")
        self.copy_cmd.clicked.connect(self.copy_command_requested.emit)
        self.export_de = QPushButton("Save effect table…")
        self.export_de.setToolTip("Save the effect table (per gene: effect, 90% interval, "
                                  "baseline, real effect) as CSV")
        for b, kind in ((self.export_h5ad, "h5ad"), (self.export_csv, "csv"),
                        (self.export_plot, "plot"), (self.export_de, "de")):
            b.clicked.connect(lambda _=False, k=kind: self.export_requested.emit(k))
        # the experiment's description on its own line (it wraps into a column beside the
        # buttons at 1280 px), the buttons under it
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for b in (self.export_h5ad, self.export_csv, self.export_plot):
            buttons.addWidget(b)
        buttons.addWidget(self.dpi)
        buttons.addWidget(self.export_de)
        buttons.addWidget(self.copy_cmd)
        top = QVBoxLayout()
        top.setSpacing(2)
        top.addWidget(self.header)
        top.addLayout(buttons)

        # heatmap tab
        self.heatmap = HeatmapPlot()
        self.heatmap.setToolTip("Mean change of each gene against the matching control "
                                "(red = up, blue = down)")
        self.heat_note = plain(QLabel())
        self.heat_note.setWordWrap(True)
        self.heat_extras = QCheckBox("Show baselines and real cells")
        self.heat_extras.setToolTip("Add, after each condition, the simple baseline's change "
                                    "(additive or mean shift) and, when the open dataset holds "
                                    "real cells of the condition and its control, the real "
                                    "change")
        self.heat_extras.toggled.connect(lambda _on: self._show_heatmap())
        hr = QHBoxLayout()
        hr.addWidget(self.heat_note, 1)
        hr.addWidget(self.heat_extras)
        heat = QWidget()
        hl = QVBoxLayout(heat)
        hl.addLayout(hr)
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
        self.de_model = EffectTableModel(self)
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
        hh.setStretchLastSection(False)  # the plot takes the room the columns leave
        self.table.setAlternatingRowColors(True)
        self.table.setToolTip("Click a column header to sort (hover over it to read what it "
                              "means); click a gene to find it in the plot")
        self.table.selectionModel().currentRowChanged.connect(self._row_selected)
        self.volcano = EffectPlot()
        self.volcano.setToolTip("Each dot is a gene: right = higher after the perturbation, up "
                                "= the model is surer of it. Click a dot to find it in the table.")
        self.volcano.gene_clicked.connect(self.select_gene)
        self.evidence = QLabel()  # rich text: labels and the card's words are escaped
        self.evidence.setTextFormat(Qt.TextFormat.RichText)
        self.evidence.setWordWrap(True)
        self.de_note = plain(QLabel())  # quotes condition labels
        self.de_note.setWordWrap(True)
        dr = QHBoxLayout()
        dr.addWidget(QLabel("Compare"))
        dr.addWidget(self.compare, 1)
        self.versus = QLabel("vs its control")
        dr.addWidget(self.versus)
        dr.addSpacing(16)
        dr.addWidget(self.filter)
        self.de_split = split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.volcano)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([730, 600])     # the table's seven columns fit without scrolling
        self.table.verticalHeader().setDefaultSectionSize(22)
        de = QWidget()
        dl = QVBoxLayout(de)
        dl.addLayout(dr)
        dl.addWidget(self.evidence)
        dl.addWidget(self.de_note)
        dl.addWidget(split, 1)

        self.tabs = QTabWidget()
        self.tabs.addTab(heat, "Heatmap")
        self.tabs.addTab(umap, "UMAP")
        self.tabs.addTab(de, "Effects")
        self.tabs.setTabToolTip(0, "Genes that change most, each condition vs its control")
        self.tabs.setTabToolTip(1, "Generated cells embedded with real cells")
        self.tabs.setTabToolTip(2, "Each gene's predicted effect with its 90% interval, the "
                                   "baseline's and the real one, sortable")
        self._build_views()
        self._build_history()
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(top)
        rl.addWidget(self.tabs, 1)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.addWidget(self.history_box)
        self.split.addWidget(right)
        self.split.setStretchFactor(1, 1)
        self.split.setSizes([190, 1200])
        self.split.setCollapsible(1, False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.split, 1)
        self.read_only_note = ""
        self.de_frame = None
        self.de_label = ""
        self.de_view = None       # app.effect_table.EffectView shown
        self._de_keys: tuple = ()  # its columns
        self._de_fitted = False    # the table got their width
        self.tabs.currentChanged.connect(lambda _i: QTimer.singleShot(0, self._fit_de_split))
        self._heat = None         # (genes, matrix, labels, note, extras, extras_note)
        self.embedding = None     # app.messages.Embedding shown in the UMAP
        self._umap_gene = None    # (gene, values per point) while coloured by a gene
        self.set_experiment(None)

    # -- experiment -----------------------------------------------------------------------------
    def set_experiment(self, exp) -> None:
        self.exp = exp
        self.embedding = self._umap_gene = None
        self._umap_state = None
        self._view_done = {}
        self._top_genes = []
        if hasattr(self, "views"):
            for kind, v in self.views.items():
                v.show_message("")
                self.view_notes[kind].setText("")
            self.cmp_label.clear()
            self.pw_label.clear()
        self.copy_cmd.setEnabled(exp is not None)
        self.gene_msg.setText("")       # no error about a gene typed for the previous results
        self.heatmap.clear()
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
            self.evidence.setText("")
            self.de_model.set_frame(None)
            self.compare.blockSignals(False)
            return
        saved = f"<br><span style='color:#555'>Saved to {esc(exp.saved_to)}</span>" \
            if exp.saved_to else ""
        self.header.setText(f"<b>{esc(exp.describe())}</b>{saved}")
        self.compare.addItems(exp.labels)
        self.compare.blockSignals(False)
        self.versus.setText("vs your original cells" if exp.mode == "perturb" else
                            "vs all other generated cells" if exp.only_controls else
                            "vs its control")
        self.heat_note.setText("Computing the genes that change most…")
        self.umap_status.setText("Computing the UMAP in the background…")
        self.de_note.setText("Computing the effects…")
        self.evidence.setText("")
        self._heat = None
        self.umap.clear()
        self.volcano.clear()
        self.de_model.set_frame(None)
        self._gene_model.setStringList(sorted(map(str, exp.adata.var_names)))

    def set_heatmap(self, genes, matrix, labels, *, note: str = "", extras=(),
                    extras_note: str = "") -> None:
        """``matrix``: conditions x genes; ``extras``: (after label, label, values over genes),
        shown after their condition while *Show baselines and real cells* is ticked."""
        self._heat = (list(genes), np.asarray(matrix), list(labels), note, list(extras),
                      extras_note)
        self._top_genes = list(genes)
        self.heat_extras.setEnabled(bool(extras))
        self._show_heatmap()
        self.request_view(self.current_plot_name())

    def _show_heatmap(self) -> None:
        if self._heat is None:
            return
        genes, matrix, labels, note, extras, extras_note = self._heat
        rows, names = list(matrix), list(labels)
        if self.heat_extras.isChecked() and extras:
            rows, names = [], []
            for label, row in zip(labels, matrix, strict=True):
                rows.append(row)
                names.append(label)
                for after, name, values in extras:
                    if after == label:
                        rows.append(np.asarray(values, np.float32))
                        names.append(name)
        matrix = np.vstack(rows) if rows else np.zeros((0, len(genes)), np.float32)
        # few conditions: genes as rows, conditions as columns (every label readable);
        # many conditions (e.g. all single knockouts): conditions as rows, genes as columns
        title = "Markers: each population vs all other generated cells" \
            if self.exp is not None and self.exp.only_controls else "Change vs matching control"
        if len(labels) <= 8:
            self.heatmap.set_data(np.asarray(matrix).T, genes, names, title=title)
        else:
            self.heatmap.set_data(np.asarray(matrix), names, genes,
                                  title=title + " (hover for gene names)")
        text = note or (f"The {len(genes)} genes that change most across {len(labels)} "
                        "condition(s). Colour: mean log expression minus the control's (red up, "
                        "blue down).")
        if self.heat_extras.isChecked() and extras:
            text += (" Beside each condition: the baseline's change and, where the open dataset "
                     "has them, the real cells' change (white where a gene is missing).")
        elif not extras and extras_note:
            text += " " + extras_note
        self.heat_note.setText(text)

    def set_de(self, de) -> None:
        """Show ``de`` (app.messages.DiffExpr with its app.effect_table.EffectView)."""
        view = de.view
        self.de_frame = de.frame
        self.de_label = label = de.label
        self.de_view = view
        self.de_model.sort_col = -1
        self.de_model.set_frame(de.frame, view.columns if view is not None else ())
        keys = tuple(c.key for c in self.de_model.columns)
        fm = self.table.horizontalHeader().fontMetrics()
        for i, c in enumerate(self.de_model.columns):   # room for the (bold) header
            self.table.setColumnWidth(i, max(WIDTHS.get(c.kind, 100),
                                             int(fm.horizontalAdvance(c.header) * 1.1) + 18))
        if keys != self._de_keys:      # other columns: the table takes what they need
            self._de_keys = keys
            self._de_fitted = False
            self._fit_de_split()
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        if view is not None:
            self.volcano.show_spec(view.plot)
            self.evidence.setText(evidence_html(view.evidence))
            self.de_note.setText(" ".join([view.comparison, *view.notes]))
        if self.compare.currentText() != label:
            self.compare.blockSignals(True)
            self.compare.setCurrentText(label)
            self.compare.blockSignals(False)

    def _fit_de_split(self, *_a) -> None:
        """Give the effect table the width of its columns and the plot the rest, once the tab
        is shown (a hidden splitter has no width to share)."""
        if self._de_fitted or not self.de_split.isVisible() or self.de_split.width() < 500:
            return
        self._de_fitted = True
        need = sum(self.table.columnWidth(i) for i in range(len(self._de_keys))) + 24
        total = self.de_split.width() - self.de_split.handleWidth()
        self.de_split.setSizes([min(need, total - 360), max(total - need, 360)])

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
        status = emb.note or (
            f"{n_gen:,} generated cells" + (f" with {n_real:,} real cells from "
                                             f"{data_name or 'your data'}." if n_real else
                                             " (open a dataset to compare with real cells)."))
        self.set_umap_status(status + " Hover over a dot for details.")
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
            self._umap_state = ("value", vals, None, None, f"{gene}",
                                "log normalised expression\n(log1p of counts per 10,000)")
            return
        self._umap_gene = None
        col = {"condition": "condition", "cell type": "cell type", "source": "source"}[what]
        values = self.embedding.meta[col].astype(str).to_numpy()
        order, grey = category_order(values, col)
        if col == "condition":
            title = ("Generated cells by condition (real cells in grey)" if grey else
                     "Generated cells by condition")
            plot.color_by_category(values, order=order, grey=grey, title=title)
        else:
            title = f"Cells by {col}"
            plot.color_by_category(values, order=order, title=title)
        self._umap_state = ("category", values, order, grey, title, "")

    def _compare_changed(self, label: str) -> None:
        if label and self.exp is not None:
            self.de_note.setText(f"Computing the effects of {label}…")
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
        i = self.tabs.currentIndex()
        if i < 3:
            return {0: self.heatmap, 1: self.umap, 2: self.volcano}[i]
        return self.views[self.current_plot_name()]

    def current_plot_name(self) -> str:
        from ..views import KINDS

        i = self.tabs.currentIndex()
        return ("heatmap", "umap", "effects", *KINDS)[i] if i >= 0 else "heatmap"

    def figure_for(self, name: str | None = None):
        """The matplotlib figure of a tab (default: the current one) for export, built from what
        the tab shows; None when it shows nothing yet."""
        from .. import figures as F

        name = name or self.current_plot_name()
        if name == "heatmap":
            h = self.heatmap
            if not h.matrix.size:
                return None
            title = h.plot.titleLabel.text if hasattr(h.plot, "titleLabel") else ""
            return F.heatmap_figure(h.matrix, h.row_labels, h.col_labels,
                                    title=_plain_title(title))
        if name == "umap":
            st = getattr(self, "_umap_state", None)
            if st is None or self.embedding is None:
                return None
            kind, values, order, grey, title, unit = st
            return F.umap_figure(self.embedding.coords, values, kind=kind, order=order,
                                 grey=grey, title=title, value_label=unit)
        if name == "effects":
            return F.effect_figure(self.de_view.plot) if self.de_view is not None else None
        return self.views[name].figure


def _plain_title(text: str) -> str:
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", text or ""))


def evidence_html(ev) -> str:
    """The evidence class and the card's verdict, in a warning colour when the model scored
    below the baseline on such conditions (rich text; the card's words escaped)."""
    if ev is None:
        return ""
    from ..effect_table import score_text

    score = score_text(ev) if ev.score is not None else ""   # else the verdict says so
    head = f"<b>Evidence: {esc(ev.label)}</b>" + (f" ({esc(score)})" if score else "")
    verdict = esc(ev.verdict)
    if ev.below_baseline:
        return (f"<span style='color:{WARN}'>⚠ {head}. {verdict}</span>")
    return f"{head}. {verdict}"


