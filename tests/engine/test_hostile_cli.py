"""Issue 15: the command line refuses bad options with one clean line, before any work.

#11 out-of-range numbers and malformed KEY=VALUE give argparse's exit 2 with the range; anything
unexpected is one ``internal error`` line, never a traceback. #12 malformed perturbations are
refused with the reason, the same way the engine API refuses them.
"""

from __future__ import annotations

import os
import tempfile

import anndata as ad
import pytest

from engine.cli import SEED_MAX, main


def _sys_writable() -> bool:
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc, err, match, code=2):
    assert rc == code, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    assert match in lines[0], err
    assert "Traceback" not in err


def gen(model, out, *extra):
    return ["generate", "--model", model, "-o", out, "--quiet", *extra]


# -- #11: numbers out of range, KEY=VALUE without '=' -------------------------------------------

@pytest.mark.parametrize("extra, match", [
    (["--seed", "18446744073709551615"], "--seed: must be from 0 to 4,294,967,295"),
    (["--seed", str(10**23)], "--seed: must be from 0 to 4,294,967,295"),
    (["--seed", "-1"], "--seed: must be from 0"),
    (["--seed", "1.5"], "--seed: must be a whole number"),
    (["-n", "0"], "-n: must be >= 1, got '0'"),
    (["-n", "-3"], "-n: must be >= 1, got '-3'"),
    (["--steps", "0"], "--steps: must be from 1 to 1,000, got '0'"),
    (["--steps", "1001"], "--steps: must be from 1 to 1,000"),
    (["--guidance", "-1"], "--guidance: must be a finite number from 0 to 20, got '-1'"),
    (["--guidance", "nan"], "--guidance: must be a finite number from 0 to 20, got 'nan'"),
    (["--guidance", "inf"], "--guidance: must be a finite number"),
    (["--guidance", "abc"], "--guidance: must be a number from 0 to 20, got 'abc'"),
    (["--from-cells", "x.h5ad", "--from-key", "perturbation"],
     "--from-key: 'perturbation' must look like KEY=VALUE"),
    (["--from-cells", "x.h5ad", "--from-key", "=control"], "has an empty column name"),
    (["--from-cells", "x.h5ad", "--from-key", "perturbation="], "has an empty value"),
    (["--from-cells", "x.h5ad", "--from-key", "a=1,a=2"], "column 'a' is given twice"),
    (["--from-cells", "x.h5ad", "--from-key", ","], "give at least one KEY=VALUE pair"),
])
def test_generate_bad_numbers_and_pairs_exit_2_before_loading(tiny_model_dir, tmp_path, capsys,
                                                              extra, match):
    out = tmp_path / "x.h5ad"
    rc, _, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "T", *extra))
    assert_one_error(rc, err, match)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra, match", [
    (["--threads", "0"], "--threads: must be from 1 to 1,024, got '0'"),
    (["--big-n", "-5"], "--big-n: must be >= 0, got '-5'"),
    (["-n", "0"], "-n: must be >= 1"),
])
def test_bench_bad_numbers(capsys, extra, match):
    rc, _, err = run(capsys, ["bench", *extra])
    assert_one_error(rc, err, match)


def test_train_bad_seed_and_exclude_refused_before_reading(tmp_path, capsys):
    out = tmp_path / "m"
    rc, _, err = run(capsys, ["train", tmp_path / "missing.h5ad", "--out", out,
                              "--seed", "18446744073709551615"])
    assert_one_error(rc, err, "--seed: must be from 0 to 4,294,967,295")
    rc, _, err = run(capsys, ["train", tmp_path / "missing.h5ad", "--out", out,
                              "--exclude", "cell_type"])
    assert_one_error(rc, err, "--exclude: 'cell_type' must look like KEY=VALUE")
    assert not list(tmp_path.iterdir())


def test_largest_seed_works(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.h5ad"
    rc, _, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "T", "-n", "3",
                                 "--seed", str(SEED_MAX)))
    assert rc == 0, err
    assert ad.read_h5ad(out).uns["perturb_studio"]["seed"] == SEED_MAX


def test_dose_not_a_number_is_refused_before_the_model_loads(tmp_path, capsys):
    rc, _, err = run(capsys, gen(tmp_path / "no-such-model", tmp_path / "x.h5ad",
                                 "--perturbation", "A", "--dose", "abc"))
    assert_one_error(rc, err, "dose 'abc' is not a number")


def test_from_key_without_from_cells(tmp_path, capsys):
    rc, _, err = run(capsys, gen(tmp_path / "no-such-model", tmp_path / "x.h5ad",
                                 "--from-key", "cell_type=T"))
    assert_one_error(rc, err, "--from-key selects cells of --from-cells")


def test_unexpected_exception_is_one_line_not_a_traceback(monkeypatch, capsys):
    import engine.registry

    def boom():
        raise RuntimeError("something\nbroke")

    monkeypatch.delenv("PERTURB_STUDIO_DEBUG", raising=False)
    monkeypatch.setattr(engine.registry, "list_models", boom)
    rc, _, err = run(capsys, ["models"])
    assert_one_error(rc, err, "error: internal error (RuntimeError: something broke); please "
                              "report this", code=1)
    assert err.count("\n") == 1


def test_help_and_unknown_command_return_instead_of_exiting(capsys):
    assert main(["--help"]) == 0
    assert "generate" in capsys.readouterr().out
    rc, _, err = run(capsys, ["genrate"])
    assert_one_error(rc, err, "invalid choice: 'genrate'")


# -- #12: malformed perturbations, refused with the reason --------------------------------------

@pytest.mark.parametrize("pert, match", [
    ("+", "perturbation '+' has an empty part"),
    ("A+", "perturbation 'A+' has an empty part"),
    ("+A", "perturbation '+A' has an empty part"),
    ("A++B", "perturbation 'A++B' has an empty part"),
    ("", "the perturbation is empty"),
    ("   ", "the perturbation is empty"),
    ("A+A", "A is named twice in 'A+A'"),
    ("A+a", "A is named twice in 'A+a'"),
    ("A+B+A", "3 perturbations at once (A named twice); this model was trained with at most 2"),
])
def test_malformed_perturbation_refused(tiny_model_dir, tmp_path, capsys, pert, match):
    out = tmp_path / "x.h5ad"
    rc, _, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "T", "--perturbation", pert,
                                 "--perturbation-type", "CRISPRa", "-n", "3"))
    assert_one_error(rc, err, match)
    assert not list(tmp_path.iterdir())


def test_control_inside_a_combination_means_that_target_alone(tiny_model_dir, tmp_path, capsys):
    """``A+ctrl`` is ``A`` (the Norman 2019 convention, accepted in training data too)."""
    out = tmp_path / "x.h5ad"
    rc, stdout, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "T", "--perturbation",
                                      " ctrl + A ", "--perturbation-type", "CRISPRa", "-n", "3"))
    assert rc == 0, err
    assert "3 cells of T | A (CRISPRa)" in stdout
    assert set(ad.read_h5ad(out).obs["perturbation"].astype(str)) == {"A"}


# -- #14: every output suffix the writers support; evaluate fills a column the model knows ------

@pytest.mark.parametrize("name, sep", [("cells.csv.gz", ","), ("cells.tsv", "\t"),
                                       ("cells.tsv.gz", "\t"), ("CELLS.CSV", ",")])
def test_generate_writes_every_table_suffix(tiny_model_dir, tmp_path, capsys, name, sep):
    import pandas as pd

    out = tmp_path / name
    rc, _, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "B", "-n", "4"))
    assert rc == 0, err
    table = pd.read_csv(out, sep=sep, index_col=0)
    assert len(table) == 4 and "G0" in table.columns and "cell_type" in table.columns


@pytest.mark.parametrize("name, match", [
    ("cells.txt", "for tab-separated text use .tsv"),
    ("cells.xlsx", "output file must end in .h5ad, .csv, .csv.gz, .tsv, .tsv.gz"),
    (".csv", "got '.csv'"),
])
def test_generate_refuses_unknown_suffix_before_loading(tmp_path, capsys, name, match):
    rc, _, err = run(capsys, gen(tmp_path / "no-such-model", tmp_path / name))
    assert_one_error(rc, err, match)
    assert not list(tmp_path.iterdir())


def _without(synthetic, tmp_path, *cols):
    a = synthetic.copy()
    a.obs = a.obs.drop(columns=list(cols))
    path = tmp_path / "real.h5ad"
    a.write_h5ad(path)
    return path


def test_evaluate_fills_a_column_the_model_knows_one_value_of(tiny_model_dir, synthetic,
                                                             tmp_path, capsys):
    """The papalexi case: the model reads ``ptype`` (only ever CRISPRa), the file has none."""
    data = _without(synthetic, tmp_path, "ptype")
    rc, out, err = run(capsys, ["evaluate", "--model", tiny_model_dir, "--data", data,
                                "--cell-type", "T", "--perturbation", "A", "--mode", "denovo",
                                "--steps", "2", "--json"])
    assert rc == 0, err
    assert "has no column 'ptype'; every cell gets perturbation type 'CRISPRa' (the only " \
           "value this model knows)" in err
    import json

    assert json.loads(out)[0]["n_real"] == 40


def test_evaluate_uses_the_option_as_fill_value(tiny_model_dir, synthetic, tmp_path, capsys):
    data = _without(synthetic, tmp_path, "ptype", "cell_type")
    rc, out, err = run(capsys, ["evaluate", "--model", tiny_model_dir, "--data", data,
                                "--cell-type", "T", "--perturbation", "A", "--perturbation-type",
                                "CRISPRa", "--mode", "denovo", "--steps", "2"])
    assert rc == 0, err
    assert "every cell gets cell type 'T' (from --cell-type)" in err
    assert "every cell gets perturbation type 'CRISPRa' (from --perturbation-type)" in err
    assert "real cells=80" in out                       # both cell types' A cells, now all "T"


def test_evaluate_never_fills_a_column_the_user_named(tiny_model_dir, synthetic, tmp_path,
                                                      capsys):
    data = _without(synthetic, tmp_path, "ptype")
    rc, _, err = run(capsys, ["evaluate", "--model", tiny_model_dir, "--data", data,
                              "--perturbation-type-key", "ptype_typo", "--cell-type", "T",
                              "--perturbation", "A", "--mode", "denovo"])
    assert rc == 2
    assert "perturbation type column 'ptype_typo' is not in this dataset" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def crispr_without_type_column(data_dir, tmp_path_factory):
    """The shipped CRISPR model's training file, without its perturbation_type column (it
    never had a tissue column, which the model also reads)."""
    a = ad.read_h5ad(data_dir / "norman2019_mcfaline2023_crispr_train.h5ad")
    a.obs = a.obs.drop(columns=["perturbation_type"])
    path = tmp_path_factory.mktemp("crispr") / "crispr_no_type.h5ad"
    a.write_h5ad(path)
    return path


def test_evaluate_missing_column_with_several_values_names_the_options(
        crispr_without_type_column, capsys):
    """CBL was only seen as CRISPRa, but the file's cells are CRISPRa and CRISPRi: filling one
    type for every cell would be wrong, so the column and the options are named."""
    rc, _, err = run(capsys, ["evaluate", "--model", "crispr-k562-glioblastoma", "--data",
                              crispr_without_type_column, "--cell-type", "k562",
                              "--perturbation", "CBL", "--device", "cpu"])
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err
    assert "has no column 'perturbation_type', where this model reads the perturbation type; " \
           "name the column that holds it with --perturbation-type-key COLUMN, or give one " \
           "value for every cell with --perturbation-type (known: CRISPRa, CRISPRi)" in lines[0]


def test_evaluate_fills_context_per_cell_type(data_dir, capsys):
    """The CRISPR model reads a tissue column its own training file lacks: each cell gets the
    tissue its cell type had in training."""
    rc, out, err = run(capsys, ["evaluate", "--model", "crispr-k562-glioblastoma", "--data",
                                data_dir / "norman2019_mcfaline2023_crispr_train.h5ad",
                                "--cell-type", "k562", "--perturbation", "SGK1+TBX3",
                                "--perturbation-type", "CRISPRa", "--mode", "denovo",
                                "--steps", "2", "--device", "cpu"])
    assert rc == 0, err
    assert "has no column 'tissue'; every cell gets the tissue its cell type had in training " \
           "(A172 -> brain, T98G -> brain, U87MG -> brain, k562 -> bone marrow)" in err
    assert "real cells=100" in out


# -- #10: the destination is checked before the model loads or anything is generated ------------

def test_output_under_a_file_is_refused_before_loading(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    rc, _, err = run(capsys, gen(tmp_path / "no-such-model", f / "sub" / "x.csv",
                                 "--cell-type", "T"))
    assert_one_error(rc, err, "is a file, not a folder")     # not "model not found": checked first
    assert f.read_text() == "mine" and sorted(tmp_path.iterdir()) == [f]


def test_output_that_is_a_folder_is_refused_before_loading(tmp_path, capsys):
    d = tmp_path / "cells.h5ad"
    d.mkdir()
    rc, _, err = run(capsys, gen(tmp_path / "no-such-model", d, "--cell-type", "T"))
    assert_one_error(rc, err, "is a folder; give a file name")


@pytest.mark.skipif(not os.path.isdir("/sys") or _sys_writable(),
                    reason="needs a folder no one may write in (/sys)")
@pytest.mark.parametrize("target", ["/sys/perturb_studio_x.csv", "/sys/ps_sub/x.csv"])
def test_unwritable_output_is_refused_before_loading(tiny_model_dir, capsys, target):
    rc, _, err = run(capsys, gen(tiny_model_dir, target, "--cell-type", "T", "-n", "3"))
    assert_one_error(rc, err, "cannot")
    assert not os.path.exists(target)


def test_missing_output_folders_are_created(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run1" / "day2" / "cells.tsv"
    rc, _, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "T", "-n", "3"))
    assert rc == 0, err
    assert out.is_file()


def test_free_space_for_a_text_table_is_checked_before_generating(tiny_model_dir, tmp_path,
                                                                   capsys, monkeypatch):
    import engine.export
    import engine.model
    from engine.errors import ResourceError

    asked = []
    real = engine.export.preflight_output

    def preflight(path, *, need_bytes=None):
        asked.append(need_bytes)
        if need_bytes is not None:
            raise ResourceError(f"writing {path} needs about {need_bytes} bytes (test)")
        return real(path)

    def never(*a, **k):
        raise AssertionError("generated although the disk check failed")

    monkeypatch.setattr(engine.export, "preflight_output", preflight)
    monkeypatch.setattr(engine.model.PerturbModel, "generate", never)
    for name in ("x.csv", "x.h5ad"):
        asked.clear()
        out = tmp_path / name
        rc, _, err = run(capsys, gen(tiny_model_dir, out, "--cell-type", "T", "-n", "1000"))
        need = engine.export.estimate_output_bytes(1000, 60, engine.model.PerturbModel.load(
            tiny_model_dir, device="cpu").density, out)
        assert need >= 120000 if name.endswith(".csv") else need > 0   # >= "0," per value
        assert_one_error(rc, err, f"needs about {need} bytes")
        assert asked == [None, need]
        assert not out.exists()


def test_evaluate_refuses_an_unknown_condition_before_reading_data(tiny_model_dir, tmp_path,
                                                                   capsys):
    rc, _, err = run(capsys, ["evaluate", "--model", tiny_model_dir, "--data",
                              tmp_path / "missing.h5ad", "--cell-type", "T", "--perturbation",
                              "A", "--perturbation-type", "KO"])
    assert_one_error(rc, err, "perturbation type 'KO' is unknown")     # not "missing.h5ad"
