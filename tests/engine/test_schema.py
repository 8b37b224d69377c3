"""engine.data.schema: guessing, validating and turning obs rows into Conditions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.conditions.spec import Condition, Perturbation
from engine.data.io import read_dataset
from engine.data.schema import Schema, guess_schema, validate_schema
from engine.errors import SchemaError


def make(obs: dict) -> ad.AnnData:
    df = pd.DataFrame(obs)
    df.index = [f"c{i}" for i in range(len(df))]
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].astype("category")
    return ad.AnnData(X=sp.csr_matrix((len(df), 3), dtype=np.float32), obs=df)


CRISPR = {
    "cell_type": ["K562", "K562", "K562", "A172", "A172"],
    "perturbation": ["control", "GATA1", "KLF1+GATA1", "control", "GATA1"],
    "perturbation_type": ["CRISPRa", "CRISPRa", "CRISPRa", "CRISPRi", "CRISPRi"],
    "dose": ["1", "0.5", "1+2", "1", "1"],
    "tissue": ["blood", "blood", "blood", "brain", "brain"],
    "organism": ["human"] * 5,
}
FULL = Schema("cell_type", "perturbation", "perturbation_type", "dose", ("organism", "tissue"))


def errors(adata, schema) -> list[str]:
    return [i.message for i in validate_schema(adata, schema) if i.severity == "error"]


# -- serialisation and guessing -----------------------------------------------------------------


def test_to_dict_from_dict_round_trip_through_json():
    s = Schema("ct", "pert", "ptype", "dose", ["org", "tissue"], "ctrl", ["unassigned"])
    assert s.context_keys == ("org", "tissue")  # lists are normalised to tuples
    d = json.loads(json.dumps(s.to_dict()))
    assert Schema.from_dict(d) == s
    assert Schema.from_dict({**d, "added_in_a_later_version": 1}) == s


def test_guess_synthetic_prefers_names_and_finds_labels():
    a = make({"celltype": ["T", "B", "T"], "guide_target": ["NT", "A", "unassigned"],
              "dose_val": [0.0, 1.0, 2.0], "species": ["human"] * 3})
    s = guess_schema(a)
    assert s.cell_type_key == "celltype"
    assert s.perturbation_key == "guide_target"
    assert s.control_label == "NT"
    assert s.drop_labels == ("unassigned",)
    assert s.dose_key == "dose_val"
    assert s.context_keys == ("species",)


def test_guess_skips_constant_dose():
    a = make(CRISPR | {"dose": ["1", "1", "1+1", "1", "1"]})
    assert guess_schema(a).dose_key is None
    assert guess_schema(make(CRISPR)).dose_key == "dose"


@pytest.mark.parametrize("name, expected", [
    ("kang2018_ifnb_pbmc_train.h5ad", Schema("cell_type", "condition")),
    ("norman2019_mcfaline2023_crispr_train.h5ad",
     Schema("cell_type", "perturbation", "perturbation_type")),
    ("norman2019_tiny_50x50.h5ad", Schema("cell_type", "condition", control_label="ctrl")),
    ("papalexi2021_thp1_crispr_ko_train.h5ad",
     Schema("cell_type", "perturbation", drop_labels=("unassigned",))),
    ("pbmc68k_reduced_counts.h5ad", Schema("bulk_labels")),
])
def test_guess_and_validate_real_files(data_dir: Path, name: str, expected: Schema):
    a = read_dataset(data_dir / name)
    s = guess_schema(a)
    assert s == expected
    assert errors(a, s) == []
    s.check(a)


# -- validation ---------------------------------------------------------------------------------


def test_valid_full_schema_has_no_issues():
    assert validate_schema(make(CRISPR), FULL) == []


def test_unknown_column_lists_available_columns():
    issues = validate_schema(make(CRISPR), Schema("celltype", "perturbation"))
    assert len(issues) == 1
    i = issues[0]
    assert i.field == "cell_type_key" and i.severity == "error"
    assert "'celltype'" in i.message and "available columns: cell_type, perturbation" in i.message


def test_missing_control_label_lists_common_values():
    a = make({"condition": ["ctrl", "ctrl", "A", "B+ctrl"]})
    (msg,) = errors(a, Schema(perturbation_key="condition"))
    assert "control label 'control' is not a value of column 'condition'" in msg
    assert "ctrl (2)" in msg and "did you mean 'ctrl'?" in msg
    assert errors(a, Schema(perturbation_key="condition", control_label="ctrl")) == []


@pytest.mark.parametrize("dose, pattern", [
    (["1", "-0.5", "1+1", "1", "1"], r"dose '-0.5' in column 'dose' must be a finite number >= 0"),
    (["1", "high", "1+1", "1", "1"], r"dose 'high' .* is not a number"),
    (["1", "1", "1+1+1", "1", "1"], r"dose '1\+1\+1' has 3 numbers but perturbation "
                                    r"'KLF1\+GATA1' has 2 parts"),
    (["1", None, "1+1", "1", "1"], r"1 perturbed cells have no value in dose column 'dose' "
                                   r"\(e.g. cell 'c1'\)"),
])
def test_bad_doses(dose, pattern):
    (msg,) = errors(make(CRISPR | {"dose": dose}), FULL)
    assert re.search(pattern, msg), msg


def test_numeric_dose_column_negative_and_nan():
    a = make(CRISPR | {"dose": [np.nan, 1.0, -2.0, 0.0, np.inf]})  # NaN on a control is fine
    msgs = errors(a, FULL)
    assert any("dose -2.0" in m for m in msgs)
    assert any("dose inf" in m for m in msgs)
    assert len(msgs) == 2


def test_role_column_with_missing_values():
    a = make(CRISPR | {"cell_type": ["K562", None, "K562", "A172", "A172"]})
    (msg,) = errors(a, FULL)
    assert "1 cells have no value in cell type column 'cell_type' (e.g. cell 'c1')" in msg


def test_type_missing_only_on_controls_is_fine():
    a = make(CRISPR | {"perturbation_type": [None, "CRISPRa", "CRISPRa", None, "CRISPRi"]})
    assert errors(a, FULL) == []
    b = make(CRISPR | {"perturbation_type": [None, None, "CRISPRa", None, "CRISPRi"]})
    assert any("perturbation type column" in m for m in errors(b, FULL))


def test_too_many_types_per_cell():
    a = make(CRISPR | {"perturbation_type": ["CRISPRa", "CRISPRa+CRISPRi", "CRISPRa",
                                            "CRISPRi", "CRISPRi"]})
    (msg,) = errors(a, FULL)
    assert "perturbation type 'CRISPRa+CRISPRi' gives 2 types for perturbation 'GATA1'" in msg


def test_same_column_twice_and_roles_without_perturbation():
    msgs = errors(make(CRISPR), Schema("cell_type", "cell_type"))
    assert any("used both as cell type and as perturbation" in m for m in msgs)
    msgs = errors(make(CRISPR), Schema("cell_type", dose_key="dose"))
    assert any("a dose column needs a perturbation column" in m for m in msgs)


def test_empty_part_in_combination():
    a = make(CRISPR | {"perturbation": ["control", "GATA1+", "KLF1+GATA1", "control", "A"]})
    assert any("'GATA1+'" in m and "empty part" in m for m in errors(a, FULL))


def test_check_raises_schema_error_listing_every_error():
    a = make(CRISPR | {"dose": ["1", "-1", "1+1", "1", "1"]})
    s = Schema("cell_type", "perturbation", "perturbation_type", "dose", ("nope",), "ctl")
    with pytest.raises(SchemaError) as err:
        s.check(a)
    msg = str(err.value)
    assert "'nope' is not in this dataset" in msg
    assert msg.count("\n- ") == 1  # unknown columns stop the value checks
    s2 = Schema("cell_type", "perturbation", "perturbation_type", "dose", (), "ctl")
    with pytest.raises(SchemaError) as err:
        s2.check(a)
    assert "control label 'ctl'" in str(err.value) and "dose '-1'" in str(err.value)


def test_drop_label_warning_when_absent():
    issues = validate_schema(make(CRISPR), Schema("cell_type", "perturbation",
                                                  drop_labels=("unassigned",)))
    assert [(i.field, i.severity) for i in issues] == [("drop_labels", "warning")]


# -- conditions ---------------------------------------------------------------------------------


def test_conditions_parse_combinations_types_doses_and_context():
    conds = FULL.conditions(make(CRISPR))
    ctx_blood = {"organism": "human", "tissue": "blood"}
    assert conds[0] == Condition.make("K562", [], ctx_blood)
    assert conds[0].is_control
    assert conds[1] == Condition.make("K562", [Perturbation("GATA1", "CRISPRa", 0.5)], ctx_blood)
    assert conds[2].perturbations == (Perturbation("GATA1", "CRISPRa", 2.0),
                                      Perturbation("KLF1", "CRISPRa", 1.0))
    assert conds[2].context == (("organism", "human"), ("tissue", "blood"))
    assert conds[4].perturbations == (Perturbation("GATA1", "CRISPRi", 1.0),)
    assert conds[3].context_dict() == {"organism": "human", "tissue": "brain"}


def test_conditions_control_words_inside_combinations():
    a = make({"condition": ["ctrl", "MEIS1+ctrl", "ctrl+ETS2", "A+B"],
              "dose_val": ["1", "1+2", "3+4", "1+1"]})
    s = Schema(perturbation_key="condition", dose_key="dose_val", control_label="ctrl")
    conds = s.conditions(a)
    assert conds[0].is_control
    assert conds[1].perturbations == (Perturbation("MEIS1", None, 1.0),)
    assert conds[2].perturbations == (Perturbation("ETS2", None, 4.0),)
    assert [p.target for p in conds[3].perturbations] == ["A", "B"]


def test_condition_codes_dedupe_equal_conditions():
    a = make({"perturbation": ["A+B", "B+A", "control", "ctrl", "A"]})
    codes, conds = Schema(perturbation_key="perturbation").condition_codes(a)
    assert codes.tolist() == [0, 0, 1, 1, 2]
    assert conds[0].perturbation_label == "A+B" and conds[1].is_control


def test_conditions_refuse_dropped_cells_until_filtered():
    a = make({"perturbation": ["control", "A", "unassigned", "A"]})
    s = Schema(perturbation_key="perturbation", drop_labels=("unassigned",))
    with pytest.raises(SchemaError, match=r"1 cells .* drop .* schema.filter"):
        s.conditions(a)
    kept = s.filter(a)
    assert kept.n_obs == 3 and "unassigned" not in set(kept.obs["perturbation"])
    assert [c.perturbation_label for c in s.conditions(kept)] == ["control", "A", "A"]


def test_conditions_raise_on_invalid_schema():
    with pytest.raises(SchemaError, match="'nope' is not in this dataset"):
        Schema("nope").conditions(make(CRISPR))


def test_no_roles_gives_one_empty_condition():
    conds = Schema().conditions(make(CRISPR))
    assert conds == [Condition()] * 5


def test_conditions_fast_on_20k_cells():
    rng = np.random.default_rng(0)
    n = 20_000
    genes = [f"G{i}" for i in range(200)]
    pert = np.where(rng.random(n) < 0.2, "control",
                    np.char.add(np.char.add(rng.choice(genes[:100], n), "+"),
                            rng.choice(genes[100:], n)))   # two different targets
    a = make({"cell_type": rng.choice(["T", "B", "NK"], n), "perturbation": pert,
              "perturbation_type": rng.choice(["CRISPRa", "CRISPRi"], n),
              "donor": rng.choice(["d1", "d2"], n)})
    s = Schema("cell_type", "perturbation", "perturbation_type", context_keys=("donor",))
    codes, uniq = s.condition_codes(a)
    conds = s.conditions(a)
    assert len(conds) == n
    # parsed once per distinct row (the fast path), not once per cell
    assert len(uniq) < n and all(conds[i] == uniq[codes[i]] for i in range(0, n, 997))
    i = int(np.flatnonzero(pert != "control")[0])
    assert conds[i].perturbation_label == "+".join(sorted(pert[i].split("+")))


def test_conditions_real_crispr_file(data_dir: Path):
    a = read_dataset(data_dir / "norman2019_mcfaline2023_crispr_train.h5ad")
    s = guess_schema(a)
    codes, conds = s.condition_codes(a)
    assert len(codes) == a.n_obs
    doubles = a.obs["is_double"].to_numpy()
    n_perts = np.array([len(conds[c].perturbations) for c in codes])
    assert (n_perts[doubles] == 2).all()
    types = {p.type for c in conds for p in c.perturbations}
    assert types == {"CRISPRa", "CRISPRi"}
    ctrl = (a.obs["perturbation"] == "control").to_numpy()
    assert (n_perts[ctrl] == 0).all() and (n_perts[~ctrl] > 0).all()


def test_conditions_real_papalexi_after_filter(data_dir: Path):
    a = read_dataset(data_dir / "papalexi2021_thp1_crispr_ko_train.h5ad")
    s = guess_schema(a)
    kept = s.filter(a)
    assert kept.n_obs == a.n_obs - 4537
    conds = s.conditions(kept)
    assert sum(c.is_control for c in conds) == 1635
    assert all(c.cell_type == "THP-1" for c in conds)
