"""Issue 15 #12 and the fuzz suite for the condition parsers.

One splitter of ``A+B`` values (:func:`engine.conditions.spec.split_parts`) serves the CLI, the
GUI / engine API (:meth:`Condition.parse`, :meth:`ConditionSpace.validate`) and training data
(:mod:`engine.data.schema`), so all three refuse the same labels for the same reason. The
property tests assert that every input either parses into a well-formed result (round trip where
it makes sense) or raises the engine's specific error, never anything else.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import _kv_list, main
from engine.conditions.spec import (
    CONTROL_WORDS,
    Condition,
    ConditionSpace,
    Perturbation,
    parse_context,
    repeated_targets,
    split_combination,
    split_parts,
)
from engine.data.schema import Schema, validate_schema
from engine.errors import ConditionError, SchemaError

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

SPACE = ConditionSpace(cell_types=["T", "B"], targets=["A", "B", "CBL", "STAT1"],
                       perturbation_types=["CRISPRa"],
                       target_types={t: ["CRISPRa"] for t in ("A", "B", "CBL", "STAT1")},
                       max_perturbations=2)


def adata(perturbation: list[str], **cols):
    import anndata as ad

    obs = pd.DataFrame({"perturbation": perturbation, **cols})
    obs.index = [f"c{i}" for i in range(len(obs))]
    return ad.AnnData(X=sp.csr_matrix((len(obs), 2), dtype=np.float32), obs=obs)


def errors(a, schema):
    return [i.message for i in validate_schema(a, schema) if i.severity == "error"]


# -- regressions: the one splitter ---------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("+", "has an empty part"), ("STAT1+", "'STAT1+' has an empty part"),
    ("+STAT1", "'+STAT1' has an empty part"), ("A+ +B", "has an empty part"),
    ("", "the perturbation is empty"), (" \t", "the perturbation is empty"),
])
def test_split_refuses_empty_values_and_parts(text, match):
    with pytest.raises(ConditionError, match=re.escape(match)):
        split_combination(text)
    with pytest.raises(ConditionError, match=re.escape(match)):
        Condition.parse("T", text)


def test_split_keeps_targets_and_drops_control_parts():
    assert split_parts(" A + B ") == ("A", "B")
    assert split_combination("MEIS1+ctrl") == ("MEIS1",)
    assert split_combination("control") == ()
    assert split_combination("DMSO+drugA", control_labels=("DMSO",)) == ("drugA",)
    assert repeated_targets(["CBL", "A", "cbl", "A"]) == ["CBL", "A"]


def test_parse_uses_the_models_control_label():
    assert Condition.parse("T", "DMSO", control_label="DMSO").is_control
    assert Condition.parse("T", "DMSO").perturbations == (Perturbation("DMSO"),)


@pytest.mark.parametrize("kwargs, match", [
    ({"cell_type": "  "}, "the cell type is empty"),
    ({"perturbation": "A", "perturbation_type": ""}, "the perturbation type is empty"),
    ({"perturbation": "A+B", "dose": "1+"}, "dose '1\\+' has an empty part"),
    ({"perturbation": "A", "context": "=human"}, "has an empty level"),
    ({"perturbation": "A", "context": "organism="}, "has an empty value"),
    ({"perturbation": "A", "context": "organism=human,organism=mouse"}, "given twice"),
])
def test_parse_refuses_blank_pieces(kwargs, match):
    with pytest.raises(ConditionError, match=match):
        Condition.parse(**kwargs)


@pytest.mark.parametrize("perts, match", [
    ([Perturbation("CBL", "CRISPRa"), Perturbation("CBL", "CRISPRa")],
     "CBL is named twice in 'CBL\\+CBL'"),
    ([Perturbation("CBL", "CRISPRa"), Perturbation("cbl", "CRISPRa")], "CBL is named twice"),
    ([Perturbation("A+B", "CRISPRa")], "'A\\+B' is not one target name"),
    ([Perturbation(" A", "CRISPRa")], "' A' is not one target name"),
    ([Perturbation("", "CRISPRa")], "'' is not one target name"),
])
def test_validate_refuses_repeated_and_malformed_targets(perts, match):
    """What the GUI builds (Condition.make from rows) is refused like the CLI's strings."""
    with pytest.raises(ConditionError, match=match):
        SPACE.validate(Condition.make("T", perts))


# -- regressions: training data labels ------------------------------------------------------------

def test_schema_refuses_repeated_target_with_column_label_and_count():
    a = adata(["control"] * 3 + ["A+A"] * 4 + ["A"] * 2)
    msgs = errors(a, Schema(perturbation_key="perturbation"))
    assert len(msgs) == 1
    assert "perturbation 'A+A' in column 'perturbation' (4 cells) has a target named twice" \
        in msgs[0]
    assert "relabel them 'A'" in msgs[0]
    with pytest.raises(SchemaError, match="named twice"):
        Schema(perturbation_key="perturbation").condition_codes(a)


def test_schema_refuses_case_repeats_and_empty_parts_with_counts():
    a = adata(["control", "CBL+cbl", "CBL+cbl", "STAT1+", "+STAT1", "+STAT1", "+"])
    msgs = errors(a, Schema(perturbation_key="perturbation"))
    empty = next(m for m in msgs if "empty part" in m)
    assert "3 perturbation labels in column 'perturbation'" in empty
    assert "'+STAT1' (2 cells)" in empty and "'STAT1+' (1 cells)" in empty
    assert any("'CBL+cbl' in column 'perturbation' (2 cells)" in m and "named twice" in m
               for m in msgs)


def test_schema_lists_at_most_five_bad_labels():
    labels = [f"G{i}+G{i}" for i in range(40)]
    msgs = errors(adata(["control"] + labels), Schema(perturbation_key="perturbation"))
    assert len(msgs) == 1 and "(40 labels, 40 cells in all)" in msgs[0]
    assert msgs[0].count("+G") <= 8


def test_schema_keeps_control_parts_of_norman_labels():
    a = adata(["ctrl", "MEIS1+ctrl", "ctrl+ETS2", "ctrl+ctrl"])
    s = Schema(perturbation_key="perturbation", control_label="ctrl")
    assert errors(a, s) == []
    conds = s.conditions(a)
    assert [c.perturbation_label for c in conds] == ["control", "MEIS1", "ETS2", "control"]


def test_schema_refuses_empty_part_in_type_column():
    a = adata(["control", "A", "A+B"], ptype=["CRISPRa", "CRISPRa+", "CRISPRa"])
    msgs = errors(a, Schema(perturbation_key="perturbation", perturbation_type_key="ptype"))
    assert any("perturbation type 'CRISPRa+' in column 'ptype' has an empty part" in m
               for m in msgs)


# -- property tests -------------------------------------------------------------------------------

NAMES = st.sampled_from(["A", "B", "CBL", "cbl", "STAT1", "ctrl", "control", "Ω", "é", "日本",
                         "x y", "GATA1", "NT"])
PIECES = st.one_of(NAMES, st.sampled_from(["+", " ", "\t", " + ", "++", "\u00a0", ",", "="]),
                   st.text(max_size=4))
MESSY = st.lists(PIECES, max_size=8).map("".join)


def well_formed(cond: Condition) -> None:
    for p in cond.perturbations:
        assert p.target and p.target == p.target.strip() and "+" not in p.target
        assert p.target.strip().lower() not in CONTROL_WORDS


@FUZZ
@given(text=MESSY)
def test_fuzz_parse_gives_well_formed_condition_or_condition_error(text):
    try:
        cond = Condition.parse("T", text)
    except ConditionError as e:
        assert str(e)
        return
    well_formed(cond)
    assert Condition.parse("T", cond.perturbation_label) == cond       # round trip
    try:
        SPACE.validate(cond)
    except ConditionError:
        return
    assert len(cond.perturbations) <= 2 and not repeated_targets(
        p.target for p in cond.perturbations)


TARGET = st.text(st.characters(blacklist_characters="+,=", blacklist_categories=("Cs",)),
                 min_size=1, max_size=8).map(str.strip).filter(
    lambda t: t and t.lower() not in CONTROL_WORDS)


@FUZZ
@given(targets=st.lists(TARGET, min_size=1, max_size=4, unique_by=str.casefold),
       pad=st.sampled_from(["", " ", "  ", "\t"]))
def test_fuzz_combination_round_trip(targets, pad):
    text = f"{pad}+{pad}".join(targets)
    cond = Condition.parse("T", text, "KO")
    assert sorted(p.target for p in cond.perturbations) == sorted(targets)
    assert all(p.type == "KO" for p in cond.perturbations)
    assert Condition.parse("T", cond.perturbation_label, "KO") == cond
    assert Condition.parse("T", "+".join(reversed(targets)), "KO") == cond


@FUZZ
@given(text=st.lists(st.one_of(NAMES, st.sampled_from(["=", ",", " ", "=="]),
                               st.text(max_size=3)), max_size=10).map("".join))
def test_fuzz_context_parses_or_raises_condition_error(text):
    try:
        ctx = parse_context(text)
    except ConditionError:
        return
    for k, v in ctx.items():
        assert k and v and k == k.strip() and v == v.strip() and "," not in k + v
    assert parse_context(",".join(f"{k}={v}" for k, v in ctx.items())) == ctx


@FUZZ
@given(pairs=st.dictionaries(TARGET, TARGET, min_size=1, max_size=4))
def test_fuzz_kv_list_round_trip(pairs):
    text = ",".join(f"{k} = {v}" for k, v in pairs.items())
    assert _kv_list(text) == pairs


@FUZZ
@given(text=st.lists(st.one_of(NAMES, st.sampled_from(["=", ",", " "]), st.text(max_size=3)),
                     max_size=10).map("".join))
def test_fuzz_kv_list_parses_or_raises_argument_type_error(text):
    try:
        out = _kv_list(text)
    except argparse.ArgumentTypeError as e:
        assert str(e)
        return
    assert out and all(k and v for k, v in out.items())


@FUZZ
@given(labels=st.lists(MESSY, min_size=1, max_size=6))
def test_fuzz_schema_labels_refused_at_check_or_well_formed(labels):
    a = adata(["control"] + labels)
    s = Schema(perturbation_key="perturbation")
    try:
        s.check(a)
    except SchemaError as e:
        assert "perturbation" in str(e)
        return
    codes, conds = s.condition_codes(a)
    for c in conds:
        well_formed(c)
        assert not repeated_targets(p.target for p in c.perturbations)


@FUZZ
@given(pert=MESSY, ctx=st.one_of(st.none(), MESSY), seed=st.one_of(
    st.integers(-2**70, 2**70).map(str), st.text(max_size=6)))
def test_fuzz_cli_generate_one_error_line_no_file(tmp_path, capsys, pert, ctx, seed):
    out = tmp_path / "x.h5ad"
    argv = ["generate", "--model", str(tmp_path / "no-such-model"), "-o", str(out),
            f"--perturbation={pert}", f"--seed={seed}", "--quiet"]
    if ctx is not None:
        argv.append(f"--context={ctx}")
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert "Traceback" not in err
    assert not out.exists()


OPTION_VALUE = st.one_of(MESSY, st.integers(-2**70, 2**70).map(str),
                         st.floats(allow_nan=True, allow_infinity=True).map(repr))


@FUZZ
@given(seed=OPTION_VALUE, exclude=MESSY, keys=MESSY, n=OPTION_VALUE, steps=OPTION_VALUE,
       guidance=OPTION_VALUE)
def test_fuzz_cli_options_never_traceback(tmp_path, capsys, seed, exclude, keys, n, steps,
                                          guidance):
    """Whatever the option values, nothing is loaded from a missing file and nothing is
    written: exit 2 and one ``error:`` line (argparse's or the engine's)."""
    runs = [["train", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m"),
             f"--seed={seed}", f"--exclude={exclude}", f"--context-keys={keys}", "--quiet"],
            ["generate", "--model", str(tmp_path / "no-such-model"), "-o",
             str(tmp_path / "x.csv"), f"-n={n}", f"--steps={steps}", f"--guidance={guidance}",
             "--quiet"]]
    for argv in runs:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, err
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
        assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_vocab_refuses_repeated_targets_even_past_the_schema():
    from engine.conditions.vocab import Vocab

    conds = [Condition.make("T", [Perturbation("A"), Perturbation("A")]), Condition.make("T")]
    with pytest.raises(ConditionError, match="names A twice"):
        Vocab.from_conditions(conds, [])
    assert Vocab.from_conditions([Condition.make("T", [Perturbation("A")])], []) \
        .max_perturbations == 1
