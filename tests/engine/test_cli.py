"""The command line: outputs, exit codes, and no partial files on errors."""

from __future__ import annotations

import json

import anndata as ad
import pytest

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


# -- entry points without Qt (issue 9 #7) -----------------------------------------------------
def _pyproject() -> dict:
    import tomllib
    from pathlib import Path

    return tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_qt_is_an_extra_and_both_scripts_point_at_the_engine():
    proj = _pyproject()["project"]
    deps = " ".join(proj["dependencies"])
    assert "PySide6" not in deps and "pyqtgraph" not in deps
    gui = " ".join(proj["optional-dependencies"]["gui"])
    assert "PySide6-Essentials" in gui and "pyqtgraph" in gui
    assert proj["scripts"] == {"perturb-studio": "engine.cli:launch",
                               "perturb-studio-cli": "engine.cli:main"}
    target = proj["entry-points"]["perturb_studio.gui"]["app"]
    assert target == "app.__main__:main"
    import importlib

    module, _, func = target.partition(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_launch_without_arguments_opens_the_window_through_the_entry_point(monkeypatch):
    import engine.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_gui_available", lambda: True)
    monkeypatch.setattr(cli, "_gui_entry", lambda: lambda argv: seen.append(argv) or 0)
    assert cli.launch([]) == 0
    assert cli.launch(["--selftest"]) == 0
    assert seen == [[], ["--selftest"]]


def test_launch_without_the_gui_extra_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    import engine.cli as cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "PySide6" else real(name, *a))
    monkeypatch.setattr(cli, "_gui_entry", lambda: pytest.fail("the window was looked up"))
    assert cli.launch([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "window is not installed" in err[0] and "pip install 'perturb-studio[gui]'" in err[0]
    # a misspelt command still gets argparse's list of commands, not the install line
    assert cli.launch(["trian"]) == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_launch_runs_commands_without_looking_for_the_window(monkeypatch, capsys):
    import engine.cli as cli

    monkeypatch.setattr(cli, "_gui_entry", lambda: pytest.fail("the window was looked up"))
    monkeypatch.setattr(cli, "_gui_available", lambda: pytest.fail("Qt was looked up"))
    assert cli.launch(["models", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


def test_backbone_and_objective_choices_come_from_the_engine_registries(tmp_path, capsys):
    import engine.cli as cli
    from engine.diffusion.schedules import OBJECTIVES
    from engine.nn.blocks import BACKBONES

    assert cli.BACKBONE.names() == sorted(BACKBONES)
    assert cli.OBJECTIVE.names() == sorted(OBJECTIVES)
    data = tmp_path / "x.h5ad"
    rc = main(["train", str(data), "--out", str(tmp_path / "m"), "--backbone", "rnn"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"unknown backbone 'rnn'; choose from {', '.join(sorted(BACKBONES))}" in err
    rc = main(["train", str(data), "--out", str(tmp_path / "m"), "--objective", "gan"])
    assert rc == 2
    assert "unknown objective 'gan'; choose from" in capsys.readouterr().err
