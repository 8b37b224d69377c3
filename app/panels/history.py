"""The Results page's history of experiments: a list (newest first) to click, rename and delete.
A mixin of app.panels.results.ResultsPanel (the page's signals ``history_selected``,
``history_renamed``, ``history_deleted``)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..richtext import plain


class HistoryMixin:
    # -- history --------------------------------------------------------------------------------
    def _build_history(self) -> None:
        self.history_box = QWidget()
        lay = QVBoxLayout(self.history_box)
        lay.setContentsMargins(0, 0, 4, 0)
        title = QLabel("<b>History</b>")
        self.history = QListWidget()
        self.history.setToolTip("Every experiment of this session: click one to look at it "
                                "again; double-click (or F2) to rename it")
        self.history.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                     | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.history.itemClicked.connect(self._history_clicked)
        self.history.itemChanged.connect(self._history_changed)
        self.history.setWordWrap(True)
        self.history_delete = QPushButton("Delete")
        self.history_delete.setToolTip("Remove the selected experiment from the history (a file "
                                       "already saved stays on disk)")
        self.history_delete.clicked.connect(self._history_delete)
        self.history_rename = QPushButton("Rename")
        self.history_rename.setToolTip("Rename the selected experiment (or double-click it)")
        self.history_rename.clicked.connect(
            lambda: self.history.currentItem() and self.history.editItem(
                self.history.currentItem()))
        row = QHBoxLayout()
        row.addWidget(self.history_rename)
        row.addWidget(self.history_delete)
        lay.addWidget(title)
        lay.addWidget(self.history, 1)
        self.history_details = plain(QLabel())
        self.history_details.setWordWrap(True)
        self.history_details.setStyleSheet("color:#555")
        lay.addWidget(self.history_details)
        lay.addLayout(row)
        self.history.currentItemChanged.connect(
            lambda it, _p: self.history_details.setText(it.toolTip() if it else ""))
        self._filling = False

    def set_history(self, entries, current_id: int | None) -> None:
        """``entries``: app.session.HistoryEntry, oldest first (shown newest first)."""
        entries = list(reversed(list(entries)))
        ids = [e.id for e in entries]
        have = [int(self.history.item(i).data(Qt.ItemDataRole.UserRole))
                for i in range(self.history.count())]
        self._filling = True
        if ids == have:     # same entries: update in place (a click's item stays alive)
            for i, e in enumerate(entries):
                it = self.history.item(i)
                if it.text() != e.name:
                    it.setText(e.name)
                it.setToolTip(e.tooltip())
                if e.id == current_id and self.history.currentRow() != i:
                    self.history.setCurrentRow(i)
            self._filling = False
            if self.history.currentItem() is not None:
                self.history_details.setText(self.history.currentItem().toolTip())
            return
        self.history.clear()
        for e in entries:
            it = QListWidgetItem(e.name)
            it.setData(Qt.ItemDataRole.UserRole, e.id)
            it.setToolTip(e.tooltip())
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsEditable)
            self.history.addItem(it)
            if e.id == current_id:
                self.history.setCurrentItem(it)
        self._filling = False
        n = self.history.count()
        self.history_delete.setEnabled(n > 0)
        self.history_rename.setEnabled(n > 0)

    def _history_clicked(self, item) -> None:
        self.history_selected.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    def _history_changed(self, item) -> None:
        if self._filling:
            return
        name = item.text().strip()
        if name:
            self.history_renamed.emit(int(item.data(Qt.ItemDataRole.UserRole)), name)

    def _history_delete(self) -> None:
        it = self.history.currentItem()
        if it is not None:
            self.history_deleted.emit(int(it.data(Qt.ItemDataRole.UserRole)))

