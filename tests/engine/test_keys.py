"""engine.keys names what generated cells carry, and the model writes exactly those names."""

from __future__ import annotations

from engine.keys import LAYERS, OBS, UNS


def test_keys_are_the_names_on_generated_cells(tiny_model):
    from engine import Condition

    a = tiny_model.generate(Condition.parse("T", "A+B", "CRISPRa"), 8, seed=0)
    for col in (*OBS.CONDITION_COLUMNS, OBS.IS_CONTROL):
        assert col in a.obs.columns, col
    assert LAYERS.COUNTS in a.layers
    assert UNS.PROVENANCE in a.uns
    assert a.obs[OBS.PERTURBATION].astype(str).iloc[0] == "A+B"


def test_keys_match_the_export_columns():
    from engine.export import CONDITION_COLUMNS

    assert tuple(CONDITION_COLUMNS) == OBS.CONDITION_COLUMNS
