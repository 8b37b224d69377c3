"""The table model behind the DE tab's effect table (app.effect_table says what the columns are).

Read-only, with its own numpy sort and gene filter (a QSortFilterProxyModel calls data() ~10^5
times in Python to sort 5,000 rows). Missing values (no real cell of a gene, no interval) read
"—" and sort last either way.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QColor

from ..richtext import wrap_tip

_RED, _BLUE, _GREY = QColor(178, 24, 43), QColor(33, 102, 172), QColor(120, 120, 120)
DASH = "—"


def _fmt(kind: str, v, v2=None) -> str:
    if kind == "text":
        return str(v)
    if kind == "yesno":
        return DASH if v is None or (isinstance(v, float) and np.isnan(v)) else \
            ("yes" if bool(v) else "no")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return DASH
    if not np.isfinite(f):
        return DASH
    if kind == "interval":
        try:
            f2 = float(v2)
        except (TypeError, ValueError):
            return DASH
        return f"{f:+.2f} – {f2:+.2f}" if np.isfinite(f2) else DASH
    return f"{f:+.3f}" if kind == "lfc" else f"{f:.2f}"


def _sort_key(kind: str, values: np.ndarray) -> np.ndarray:
    """Float sort keys (NaN: missing) of a column."""
    if kind == "text":
        return values
    if kind == "yesno":
        return np.array([np.nan if v is None else float(bool(v)) for v in values.tolist()])
    return np.asarray(values, dtype=np.float64)


class EffectTableModel(QAbstractTableModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.df = None
        self.columns: tuple = ()
        self.cols: list[str] = []
        self.values: list[np.ndarray] = []     # sort keys per column
        self.text: list[list[str]] = []
        self.rows = np.zeros(0, dtype=np.int64)  # visible row -> frame row
        self.sort_col, self.sort_order, self.pattern = -1, Qt.SortOrder.AscendingOrder, ""
        self.genes_lower = np.array([])

    def set_frame(self, df, columns: tuple = ()) -> None:
        """Show ``df`` through ``columns`` (app.effect_table.Column); None: empty."""
        self.beginResetModel()
        self.df = df.reset_index(drop=True) if df is not None else None
        self.columns = tuple(columns) if df is not None else ()
        self.cols = [c.key for c in self.columns]
        self.values, self.text = [], []
        for c in self.columns:
            vals = self.df[c.key].to_numpy()
            second = self.df[c.key2].to_numpy() if c.key2 else [None] * len(vals)
            self.values.append(_sort_key(c.kind, vals))
            self.text.append([_fmt(c.kind, a, b) for a, b in zip(vals.tolist(), list(second),
                                                                  strict=True)])
        self.genes_lower = np.array([]) if df is None else \
            np.char.lower(self.df["gene"].to_numpy().astype(str))
        self._reorder()
        self.endResetModel()

    def column_of(self, key: str) -> int:
        return self.cols.index(key) if key in self.cols else -1

    def _reorder(self) -> None:
        if self.df is None:
            self.rows = np.zeros(0, dtype=np.int64)
            return
        idx = np.arange(len(self.df))
        if self.pattern:
            idx = idx[np.char.find(self.genes_lower, self.pattern.lower()) >= 0]
        if 0 <= self.sort_col < len(self.values):
            v = self.values[self.sort_col][idx]
            if self.columns[self.sort_col].kind == "text":
                o = np.argsort(v.astype(str), kind="stable")
                if self.sort_order == Qt.SortOrder.DescendingOrder:
                    o = o[::-1]
            else:
                missing = np.isnan(v)
                key = np.where(missing, 0.0, v)
                if self.sort_order == Qt.SortOrder.DescendingOrder:
                    key = -key
                o = np.lexsort((key, missing))            # missing last either way
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

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: B008, N802
        return len(self.cols)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if self.df is None or not index.isValid():
            return None
        r, c = int(self.rows[index.row()]), index.column()
        col = self.columns[c]
        if role == Qt.ItemDataRole.DisplayRole:
            return self.text[c][r]
        if role == Qt.ItemDataRole.UserRole:
            v = self.values[c][r]
            return str(v) if col.kind == "text" else float(v)
        if role == Qt.ItemDataRole.TextAlignmentRole and col.kind != "text":
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole:
            if self.text[c][r] == DASH:
                return _GREY
            if col.kind == "lfc":
                return _RED if self.values[c][r] > 0 else _BLUE
            if col.kind == "yesno" and self.text[c][r] == "no":
                return _GREY
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self.columns):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section].header
        if role == Qt.ItemDataRole.ToolTipRole:
            return wrap_tip(self.columns[section].tooltip)
        return None
