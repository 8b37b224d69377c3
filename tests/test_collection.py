"""Every test file under tests/ is collected by the command CI runs (issue 15 #16).

pytest's default ``norecursedirs`` skips folders named ``build``, ``dist``, ``venv`` and any
starting with a dot; that once hid the installer tests from CI. This test collects the suite the
way ``make test`` does and fails if a ``test_*.py`` file is missing from the collection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_file_is_collected():
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    assert "tests/bundle/test_bundle.py" in files
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "-p", "no:randomly"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    collected = {line.split("::", 1)[0] for line in out.stdout.splitlines() if "::" in line}
    missing = [f for f in files if f not in collected]
    assert not missing, f"test files pytest does not collect: {missing}\n{out.stdout[-2000:]}"
