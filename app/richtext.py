"""Show strings the user or a model file controls (names, labels, genes, columns, paths, engine
messages quoting them) without letting them render as HTML.

Qt labels and tooltips guess the format: a text whose first line holds ``<b>`` or ``&lt;`` is
taken as rich text. So:

- inside rich text, every such string goes through :func:`esc`;
- a label that shows only plain text is switched to plain with :func:`plain`;
- a tooltip made of such a string goes through :func:`tip`.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt


def esc(value) -> str:
    """``value`` as text that rich text shows literally."""
    return html.escape(str(value), quote=True)


def tip(value) -> str:
    """A tooltip that shows ``value`` literally (escaped, in a tag so that Qt takes it as rich
    text and decodes the entities; lines kept as they are, never re-wrapped at a hyphen)."""
    return "<p style='white-space:pre'>" + esc(value).replace("\n", "<br>") + "</p>"


def plain(label):
    """Switch a QLabel (or anything with setTextFormat) to plain text; returns it."""
    label.setTextFormat(Qt.TextFormat.PlainText)
    return label


def card_value(model, key: str, default=""):
    """``model.card[key]`` when the card is a dict holding it; ``default`` otherwise (a card is
    data from a model folder and may have any shape)."""
    card = getattr(model, "card", None)
    return card.get(key, default) if isinstance(card, dict) else default


def wrap_tip(value) -> str:
    """Like :func:`tip`, for a long sentence: shown literally, wrapped to the tooltip's width."""
    return "<p>" + esc(value).replace("\n", "<br>") + "</p>"
