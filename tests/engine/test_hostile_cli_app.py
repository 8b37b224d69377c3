"""Issue 15 #15: ``perturb-studio WORD`` never opens the desktop app for a word that is not a
command, an option the app knows, or an existing file; it exits 2 with the commands and a
"did you mean", before Qt is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import app.__main__ as entry
from engine.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def test_one_list_of_commands():
    assert entry.COMMANDS is COMMANDS
    assert not hasattr(entry, "CLI_COMMANDS")


@pytest.mark.parametrize("argv, match", [
    (["genrate", "--model", "x"], "'genrate' is not a command; did you mean 'generate'?"),
    (["modles"], "'modles' is not a command; did you mean 'models'?"),
    (["--selftst"], "unknown option '--selftst'; did you mean '--selftest'?"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["banana"], "'banana' is neither a command nor an existing file"),
    (["/no/such/cells.h5ad"], "no such file: '/no/such/cells.h5ad'"),
    (["-style", "fusion", "missing.h5ad"], "no such file: 'missing.h5ad'"),
])
def test_not_a_command_exits_2_with_commands(capsys, argv, match):
    assert entry.main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "commands: train, generate, effects, evaluate, models, bench" in err


def test_files_and_qt_options_still_open_the_app(tmp_path):
    f = tmp_path / "cells.h5ad"
    f.write_bytes(b"")
    assert entry.gui_args_problem([]) is None
    assert entry.gui_args_problem([str(f)]) is None
    assert entry.gui_args_problem(["-style", "fusion", str(f)]) is None
    assert entry.gui_args_problem(["--platform=offscreen", "-reverse", str(tmp_path)]) is None
    assert entry._files(["-style", "fusion", str(f)]) == [str(f)]


def test_typo_in_a_fresh_process_fails_fast_without_qt():
    """The reported symptom: a script calling ``perturb-studio genrate`` hung on a window."""
    code = ("import sys; from app.__main__ import main; rc = main(['genrate', '-n', '5']);"
            "print('PySide6' in sys.modules); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QT_QPA_PLATFORM", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout.strip() == "False"
    assert "did you mean 'generate'?" in r.stderr and "Traceback" not in r.stderr


def test_engine_cli_import_stays_light():
    code = ("import sys, engine.cli;"
            "heavy=[m for m in ('torch','numpy','anndata','scanpy') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
