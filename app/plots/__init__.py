"""pyqtgraph plots: items are created once and updated in place."""
