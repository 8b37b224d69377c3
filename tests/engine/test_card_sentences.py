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
    assert ("expect R2 around 0.86 (0.90 on the folds its rule was chosen on; Kang "
            "leave-one-cell-type-out)") in text
    assert "mean shift baseline reaches 0.72" in text


def test_without_a_nested_estimate_the_scored_figure_is_what_to_expect():
    from engine.cards import plain_sentences

    text = " ".join(plain_sentences(_card({"r2_top100": 0.81})))
    assert "expect R2 around 0.81 (Kang" in text and "chosen on" not in text


def test_the_sentence_names_what_was_measured_not_the_script():
    from engine.cards import plain_sentences

    card = _card({"r2_top100": 0.9})
    card["evidence"]["new_cell_type"]["source"] = (
        "build_scripts/crispr_heldout.py: 3 genes held out in one line, one 5-member model "
        "trained without them (docs/results/anchor.json); more details")
    text = " ".join(plain_sentences(card))
    assert "expect R2 around 0.90 (3 genes held out in one line);" in text
    assert "build_scripts" not in text and "docs/results" not in text


def test_the_control_split_says_when_the_direction_of_the_changes_is_not_confirmed():
    """A row scored with control cells split between prediction and truth (engine.evaluate
    control_split): the sentence gives both Pearson deltas and says when the model's is below
    the baseline's."""
    from engine.cards import plain_sentences, render_markdown

    card = _card({"r2_top100": 0.91, "pearson_delta_top100_split": -0.11})
    card["evidence"]["new_cell_type"]["baseline"]["pearson_delta_top100_split"] = 0.04
    text = " ".join(plain_sentences(card))
    assert "not shared between prediction and truth" in text
    assert "at -0.11 (Pearson delta), the baseline's at 0.04" in text
    assert "the direction of its changes is not confirmed" in text
    card["evidence"]["new_cell_type"]["model"]["pearson_delta_top100_split"] = 0.5
    assert "not confirmed" not in " ".join(plain_sentences(card))
    import json
    from pathlib import Path

    config = json.loads((Path(__file__).resolve().parents[2] / "resources" / "models" /
                         "crispr-k562-glioblastoma" / "config.json").read_text())
    md = render_markdown(config, card)
    assert "Pearson delta 0.50 with control cells not shared, baseline 0.04" in md
    plain = _card({"r2_top100": 0.91})
    assert "not shared" not in " ".join(plain_sentences(plain))
    card["evidence"]["measured"] = {
        "model": {"r2_top100": 0.866, "n": 56}, "source": "card split",
        "baseline": {"name": "additive", "r2_top100": 0.924, "n": 3,
                     "model_on_same": {"r2_top100": 0.964}}}
    md = render_markdown(config, card)
    assert "| additive | 0.924 (n=3; model 0.964 on the same) |" in md
