"""The Results page's figure tabs (app.views: dot plot, violins, per-cell heatmap, gene sets,
pathway tokens, compare, sweep): their controls, what each asks the controller to draw, and showing the drawn
figure. A mixin of app.panels.results.ResultsPanel (it uses the page's ``exp``, ``tabs``,
``_gene_model``, ``umap`` and ``embedding``)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..plots.figure_view import FigureView
from ..richtext import plain


class FigureTabsMixin:
    # -- figure views (app.views) ----------------------------------------------------------------
    def _build_views(self) -> None:
        from ..views import KINDS, TITLES

        self.views: dict[str, FigureView] = {}
        self.view_notes: dict[str, QLabel] = {}
        self.view_genes: dict[str, QLineEdit] = {}
        self._view_done: dict[str, object] = {}   # kind -> the parameters it was computed with
        self._top_genes: list[str] = []
        tips = {"dotplot": "Fraction of cells expressing each gene (dot size) and its mean "
                           "expression (colour), per condition",
                "violin": "Expression of chosen genes per condition, as stacked violins",
                "cells": "Every generated cell as a column, grouped by condition, genes "
                         "clustered",
                "genesets": "Hallmark and Reactome gene-set scores per cell, as violins and "
                            "on the UMAP",
                "pathways": "Models with pathway tokens: which gene-set tokens move most "
                            "for a condition against its control",
                "compare": "A double against its singles and the additive expectation, or "
                           "generated vs real cells",
                "sweep": "Dose-response curves, combination grid or the ranked singles"}
        for kind in KINDS:
            w = QWidget()
            lay = QVBoxLayout(w)
            row = QHBoxLayout()
            if kind in ("dotplot", "violin", "cells", "sweep"):
                genes = QLineEdit()
                genes.setPlaceholderText("genes, e.g. ISG15 IFI6 CXCL10 (empty: the genes "
                                         "that change most)")
                genes.setToolTip("Genes to show, separated by spaces or commas; press Enter")
                genes.setClearButtonEnabled(True)
                genes.setCompleter(self._gene_completer())
                genes.returnPressed.connect(lambda k=kind: self.request_view(k, force=True))
                self.view_genes[kind] = genes
                row.addWidget(QLabel("Genes"))
                row.addWidget(genes, 1)
            if kind == "genesets":
                self.gs_collection = QComboBox()
                self.gs_collection.setToolTip("Gene-set collection (shipped with the app, with "
                                              "citations: resources/genesets/README.md)")
                self.gs_set = QComboBox()
                self.gs_set.setEditable(True)
                self.gs_set.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
                self.gs_set.setToolTip("Type to search the sets")
                self.gs_set.completer().setFilterMode(Qt.MatchFlag.MatchContains)
                self.gs_set.completer().setCompletionMode(
                    QCompleter.CompletionMode.PopupCompletion)
                self.gs_collection.currentTextChanged.connect(self._fill_sets)
                self.gs_set.activated.connect(lambda _i: self.request_view("genesets"))
                self.gs_umap = QPushButton("Show on UMAP")
                self.gs_umap.setToolTip("Colour the UMAP's cells by this score")
                self.gs_umap.clicked.connect(self._geneset_on_umap)
                row.addWidget(QLabel("Collection"))
                row.addWidget(self.gs_collection)
                row.addWidget(QLabel("Set"))
                row.addWidget(self.gs_set, 1)
                row.addWidget(self.gs_umap)
                self._genesets = None
            if kind == "pathways":
                self.pw_label = QComboBox()
                self.pw_label.setToolTip("The condition whose pathway tokens are shown")
                self.pw_label.activated.connect(lambda _i: self.request_view("pathways"))
                row.addWidget(QLabel("Condition"))
                row.addWidget(self.pw_label, 1)
            if kind == "compare":
                self.cmp_mode = QComboBox()
                self.cmp_mode.addItem("double vs singles and additive", "additive")
                self.cmp_mode.addItem("generated vs real cells", "real")
                self.cmp_mode.setToolTip("What to compare")
                self.cmp_label = QComboBox()
                self.cmp_label.setToolTip("The condition compared")
                self.cmp_mode.currentIndexChanged.connect(
                    lambda _i: (self._fill_compare(), self.request_view("compare")))
                self.cmp_label.activated.connect(lambda _i: self.request_view("compare"))
                row.addWidget(self.cmp_mode)
                row.addWidget(self.cmp_label, 1)
            note = plain(QLabel())
            note.setWordWrap(True)
            view = FigureView()
            view.setToolTip(tips[kind])
            lay.addLayout(row)
            lay.addWidget(note)
            lay.addWidget(view, 1)
            self.views[kind] = view
            self.view_notes[kind] = note
            i = self.tabs.addTab(w, TITLES[kind])
            self.tabs.setTabToolTip(i, tips[kind])
        self.tabs.currentChanged.connect(lambda _i: self.request_view(self.current_plot_name()))

    def _gene_completer(self) -> QCompleter:
        comp = QCompleter(self._gene_model, self)
        comp.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        comp.setFilterMode(Qt.MatchFlag.MatchContains)
        return comp

    def _load_genesets(self) -> None:
        if self._genesets is not None:
            return
        try:
            from engine.genesets import collections

            self._genesets = collections()
        except Exception as e:  # noqa: BLE001 - said in the tab
            self._genesets = {}
            self.view_notes["genesets"].setText(f"The gene sets could not be read: {e}")
        self.gs_collection.blockSignals(True)
        self.gs_collection.clear()
        self.gs_collection.addItems([k for k, v in self._genesets.items() if v])
        self.gs_collection.blockSignals(False)
        self._fill_sets(self.gs_collection.currentText())

    def _fill_sets(self, collection: str) -> None:
        sets = (self._genesets or {}).get(collection, [])
        self.gs_set.clear()
        self.gs_set.addItems([g.name for g in sets])
        pref = [i for i, g in enumerate(sets) if "INTERFERON" in g.name.upper()]
        if pref:
            self.gs_set.setCurrentIndex(pref[0])

    def current_gene_set(self):
        sets = (self._genesets or {}).get(self.gs_collection.currentText(), [])
        name = self.gs_set.currentText()
        return next((g for g in sets if g.name == name), None)

    def _fill_compare(self) -> None:
        from ..views import doubles

        self.cmp_label.clear()
        if self.exp is None:
            return
        mode = self.cmp_mode.currentData()
        labels = doubles(self.exp) if mode == "additive" else list(self.exp.labels)
        self.cmp_label.addItems(labels)

    def view_params(self, kind: str) -> dict | None:
        """What the view ``kind`` is asked to show (None: nothing to ask, e.g. no gene set)."""
        if self.exp is None:
            return None
        p: dict = {"top": list(self._top_genes)}
        if kind in self.view_genes:
            from ..views import parse_genes

            found, missing = parse_genes(self.view_genes[kind].text(),
                                         self.exp.adata.var_names)
            p["genes"] = found
            p["missing"] = missing
        if kind == "genesets":
            self._load_genesets()
            gs = self.current_gene_set()
            if gs is None:
                return None
            p["gene_set"] = gs
        if kind == "pathways":
            if self.pw_label.count() == 0:
                self.pw_label.addItems(list(self.exp.labels))
            p["label"] = self.pw_label.currentText()
        if kind == "compare":
            if self.cmp_label.count() == 0:
                self._fill_compare()
            p["compare"] = self.cmp_mode.currentData()
            p["label"] = self.cmp_label.currentText()
        return p

    def request_view(self, kind: str, *, force: bool = False) -> None:
        """Ask for the figure of ``kind`` when it is shown and not computed with these
        parameters yet."""
        from ..views import KINDS

        if kind not in KINDS or self.exp is None:
            return
        p = self.view_params(kind)
        if p is None:
            return
        key = repr(sorted((k, str(v)) for k, v in p.items()))
        if not force and self._view_done.get(kind) == key:
            return
        self._view_done[kind] = key
        missing = p.pop("missing", [])
        v = self.views[kind]
        if v.width() > 100:
            p["_size"] = (v.width(), v.height())
        v.show_message("Drawing…")
        self.view_notes[kind].setText(
            f"Not among the model's genes: {', '.join(missing)}." if missing else "")
        self.view_requested.emit(kind, p)

    def set_view(self, kind: str, result) -> None:
        """Show a computed app.views.ViewResult."""
        self.views[kind].set_figure(result.figure, result.png)
        old = self.view_notes[kind].text()
        self.view_notes[kind].setText((old + " " if old.startswith("Not among") else "")
                                      + result.note)

    def view_failed(self, kind: str, message: str) -> None:
        self.views[kind].show_message(message)
        self._view_done.pop(kind, None)

    def _geneset_on_umap(self) -> None:
        gs = self.current_gene_set()
        if gs is None:
            return
        self.tabs.setCurrentIndex(1)
        if self.embedding is None:
            self.gene_msg.setText("The UMAP is not ready yet")
            return
        self.geneset_umap_requested.emit(gs)

    def color_umap_by_score(self, gene_set, scores) -> None:
        self._umap_gene = (gene_set.name, scores)
        self.gene.blockSignals(True)
        self.gene.clear()           # the colours are the set's, not the gene typed before
        self.gene.blockSignals(False)
        self.gene_msg.setText("")
        title = f"{gene_set.label} score"
        self.umap.color_by_value(np.nan_to_num(scores), title=title)
        self._umap_state = ("value", np.asarray(scores), None, None, title,
                            "gene-set score (log normalised expression)")

