"""The import-linter contracts of pyproject.toml hold, and they are the ones issue 9 #3 asked for
(engine layers, a leaf registry, app on the engine's public API, no app entry-point cycle)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]


def test_the_contracts_are_declared():
    by_type = {}
    for c in _contracts():
        by_type.setdefault(c["type"], []).append(c)
    layers = [[m.strip() for m in layer.split("|")] for layer in by_type["layers"][0]["layers"]]

    def level(module: str) -> int:
        return next(i for i, layer in enumerate(layers) if module in layer)

    assert layers[0] == ["engine.cli"] and layers[-1] == ["engine.errors"]
    assert level("engine.train") == level("engine.evaluate") == level("engine.install")
    assert level("engine.model") < level("engine.registry") < level("engine.nn") \
        < level("engine.data") < level("engine.keys")
    forbidden = {tuple(c["source_modules"]): c["forbidden_modules"] for c in by_type["forbidden"]}
    assert {"engine.model", "engine.install"} <= set(forbidden[("engine.registry",)])
    assert "engine.model" in forbidden[("app",)] and "PySide6" in forbidden[("engine",)]
    assert any("app.tour" in src and "app.__main__" in f for src, f in forbidden.items())


def test_lint_imports_keeps_every_contract():
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    n = len(_contracts())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"Contracts: {n} kept, 0 broken." in out.stdout


def test_registry_imports_neither_the_model_nor_the_installer():
    import grimp

    g = grimp.build_graph("engine")
    assert not g.chain_exists("engine.registry", "engine.model")
    assert not g.chain_exists("engine.registry", "engine.install")
    assert g.find_shortest_chain("engine.model", "engine.registry") is not None
