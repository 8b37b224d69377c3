"""The card's plain sentences for never-measured classes (issue 14): a rule chosen on the
scored folds is reported at its nested estimate, with the in-sample figure beside it."""

from __future__ import annotations


def _card(model: dict) -> dict:
    return {"evidence": {"new_cell_type": {
        "model": {"n": 7, **model}, "baseline": {"name": "mean_shift", "r2_top100": 0.72},
        "source": "Kang leave-one-cell-type-out"}}}


def test_the_nested_estimate_is_what_to_expect():
    from engine.cards import plain_sentences

    text = " ".join(plain_sentences(_card({"r2_top100": 0.895, "r2_top100_nested": 0.862})))
    assert "expect R2 around 0.86 (0.90 on the folds its rule was chosen on)" in text
    assert "mean shift baseline reaches 0.72" in text


def test_without_a_nested_estimate_the_scored_figure_is_what_to_expect():
    from engine.cards import plain_sentences

    text = " ".join(plain_sentences(_card({"r2_top100": 0.81})))
    assert "expect R2 around 0.81 (Kang" in text and "chosen on" not in text
