"""The command line: outputs, exit codes, and no partial files on errors."""

from __future__ import annotations

import json

import anndata as ad

from engine.cli import main


def test_generate_h5ad_and_csv(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cells.h5ad"
    rc = main(["generate", "--model", str(tiny_model_dir), "--cell-type", "T",
               "--perturbation", "A+B", "--perturbation-type", "CRISPRa", "-n", "40",
               "--seed", "2", "-o", str(out), "--quiet"])
    assert rc == 0
    a = ad.read_h5ad(out)
    assert a.n_obs == 40 and "counts" in a.layers
    assert a.uns["perturb_studio"]["seed"] == 2
    csv = tmp_path / "cells.csv"
    assert main(["generate", "--model", str(tiny_model_dir), "--cell-type", "B",
                 "--perturbation", "control", "-n", "5", "-o", str(csv), "--quiet"]) == 0
    header = csv.read_text().splitlines()[0].split(",")
    assert "cell_type" in header and "G0" in header
    assert "cells/s" in capsys.readouterr().out


def test_unknown_condition_fails_cleanly(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.h5ad"
    rc = main(["generate", "--model", str(tiny_model_dir), "--cell-type", "T",
               "--perturbation", "TP53", "--perturbation-type", "CRISPRa", "-n", "5",
               "-o", str(out), "--quiet"])
    assert rc == 2
    assert "TP53 was never perturbed" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_from_cells_mode(tiny_model_dir, synthetic, tmp_path):
    src = tmp_path / "mine.h5ad"
    synthetic.write_h5ad(src)
    out = tmp_path / "perturbed.h5ad"
    rc = main(["generate", "--model", str(tiny_model_dir), "--cell-type", "T",
               "--perturbation", "A", "--perturbation-type", "CRISPRa", "--from-cells", str(src),
               "--from-key", "cell_type=T,perturbation=control", "-o", str(out), "--quiet"])
    assert rc == 0
    a = ad.read_h5ad(out)
    assert a.n_obs == int(((synthetic.obs.cell_type == "T")
                           & (synthetic.obs.perturbation == "control")).sum())
    assert a.uns["perturb_studio"]["mode"] == "perturb"


def test_bad_inputs(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "corrupt.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    assert main(["train", str(bad), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    assert "corrupt.h5ad" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert main(["generate", "--model", str(tiny_model_dir), "--cell-type", "T", "-n", "5",
                 "-o", str(tmp_path / "x.txt")]) == 2
    assert main(["generate", "--model", str(tiny_model_dir), "--cell-type", "T",
                 "--perturbation", "A", "--dose", "-1", "-n", "5",
                 "-o", str(tmp_path / "y.h5ad")]) == 2
    assert ">= 0" in capsys.readouterr().err


def test_models_json_lists_shipped(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert all({"name", "conditions", "n_genes"} <= set(m) for m in listed)
