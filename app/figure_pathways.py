"""The pathway-token figure (issue 13): per-token changes of a condition, ranked. Kept apart
from :mod:`app.figures` (which draws every other exported figure) to keep each module short."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .figures import _short, new_figure


def pathway_bar_figure(names: Sequence[str], change, spread=None, *, members: int = 1,
                       title: str = "", top: int = 24) -> Figure:
    """Ranked horizontal bars of per-token changes (largest absolute change on top); with
    ``members`` > 1, error bars of +- one member standard deviation."""
    change = np.asarray(change, float)
    order = np.argsort(-np.abs(change), kind="stable")[:top]
    fig = new_figure(7.5, min(max(2.6, 0.32 * len(order) + 1.4), 10.0))
    ax = fig.add_subplot()
    y = np.arange(len(order))[::-1]
    cols = ["#b2182b" if change[i] > 0 else "#2166ac" for i in order]
    err = np.asarray(spread, float)[order] if spread is not None and members > 1 else None
    ax.barh(y, change[order], color=cols, xerr=err, ecolor="#333", capsize=2, height=0.7)
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_yticks(y, [_short(str(names[i]), 46) for i in order], fontsize=8)
    ax.set_xlabel("change of the pathway token's score, perturbed − control\n"
                  "(mean log normalised expression of the set's genes)")
    if err is not None:
        title = (title + "\n" if title else "") + f"error bars: ± 1 sd over {members} members"
    if title:
        ax.set_title(title, fontsize=9)
    return fig
