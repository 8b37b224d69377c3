"""Issue 15 #5, fuzz: mutated config.json files load, or fail with ModelError, never otherwise.

Each example takes a valid config (the tiny test model's, or a shipped model's) and damages it:
values replaced by wrong types, huge or negative numbers, NaN / infinity, nested junk or deep
nesting; keys removed; unknown keys added; or the JSON text itself cut or garbled. The properties:

- ``PerturbModel.load`` returns a model or raises :class:`ModelError`, nothing else;
- a loaded model generates cells, or refuses with a :class:`PerturbStudioError`;
- memory stays bounded: modules are only ever built for a config whose exact parameter count
  (:func:`engine.config.parameter_count`) fits in the weights file that is there, so nothing
  larger than that file is allocated (the budget is checked before construction);
- a config that :func:`validate_config` accepts always builds (no traceback from the modules).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Condition
from engine.config import MAX_PARAMETERS, parameter_count, validate_config
from engine.errors import ModelError, PerturbStudioError
from engine.model import PerturbModel

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SHIPPED = sorted((Path(__file__).resolve().parents[2] / "resources" / "models").glob("*/"))
SHIPPED_CONFIGS = {p.name: json.loads((p / "config.json").read_text()) for p in SHIPPED}
BUILD_LIMIT = 5_000_000          # accepted configs above this are not built here (time, memory)


def _paths(obj, prefix=()):
    """Every place in a config a mutation can hit (long lists: first, second and last items)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if prefix == () and k == "training":
                out.append(("training",))                 # metadata: the key itself is enough
                continue
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        idx = sorted({0, 1, len(obj) - 1} & set(range(len(obj))))
        for i in idx:
            out += _paths(obj[i], prefix + (i,))
    return out


def _deep(depth: int):
    junk: list = []
    for _ in range(depth):
        junk = [junk]
    return junk


scalars = (st.none() | st.booleans()
           | st.integers(min_value=-(2**70), max_value=2**70)
           | st.sampled_from([0, -1, 1, 2, 10**7, 10**9, 2**63, -(2**63)])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, 1e-300])
           | st.text(max_size=12)
           | st.sampled_from(["", "abc", "mlp", "transformer", "ddpm", "gene-cell", "x" * 2000]))
nested = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4),
                      max_leaves=12)
junk = st.integers(0, 9).flatmap(lambda i: st.integers(20, 60).map(_deep) if i == 9 else nested)


def _get(config, path):
    obj = config
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def mutated(draw, base: dict):
    config = copy.deepcopy(base)
    paths = _paths(base)
    pick = draw(st.randoms(use_true_random=False))     # uniform: sampled_from favours the first
    for _ in range(draw(st.integers(1, 3))):
        path = pick.choice(paths)
        try:
            parent = _get(config, path[:-1])
            _get(config, path)
        except (KeyError, IndexError, TypeError):
            continue                                       # an earlier mutation moved it
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "nudge"]))
        last = path[-1]
        if op == "delete":
            del parent[last]
        elif op == "add":
            target = _get(config, path)
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=10))] = draw(junk)
            elif isinstance(target, list):
                target.append(draw(junk))
            else:
                parent[last] = draw(junk)
        elif op == "nudge":
            value = parent[last]
            if isinstance(value, bool):
                parent[last] = not value
            elif isinstance(value, int):
                parent[last] = value + draw(st.sampled_from([-value - 1, -1, 1, value, 10**6]))
            elif isinstance(value, float):
                parent[last] = draw(st.sampled_from([-value, value * 1e30, 0.0, math.nan]))
            elif isinstance(value, list) and value:
                parent[last] = draw(st.sampled_from([[], value + value[:1], value[::-1][:1]]))
            else:
                parent[last] = draw(junk)
        else:
            parent[last] = draw(junk)
    return config


@pytest.fixture(scope="module")
def fuzz_dir(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model whose config.json each example overwrites."""
    dest = tmp_path_factory.mktemp("fuzz") / "m"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir):
    return json.loads((tiny_model_dir / "config.json").read_text())


@pytest.fixture()
def build_spy(monkeypatch, fuzz_dir):
    """Wrap build_modules: every construction must fit in the weights file that is there."""
    real = PerturbModel.build_modules
    weights = (fuzz_dir / "model.safetensors").stat().st_size
    built = []

    def spy(config):
        n = parameter_count(config)
        assert n <= MAX_PARAMETERS and 4 * n <= weights, f"built {n:,} parameters"
        built.append(n)
        return real(config)

    monkeypatch.setattr(PerturbModel, "build_modules", staticmethod(spy))
    return built


def _load_or_model_error(folder: Path):
    try:
        model = PerturbModel.load(folder, device="cpu")
    except ModelError:
        return None
    cond = (Condition.from_dict(model.space.seen[-1]) if model.space.seen else Condition())
    try:
        cells = model.generate(cond, 2, seed=0)
    except PerturbStudioError:
        return model
    assert cells.n_obs == 2 and cells.n_vars == len(model.genes)
    return model


@FUZZ
@given(data=st.data())
def test_mutated_config_loads_or_raises_model_error(fuzz_dir, tiny_base, build_spy, data):
    config = data.draw(mutated(tiny_base))
    (fuzz_dir / "config.json").write_text(json.dumps(config))
    _load_or_model_error(fuzz_dir)


@FUZZ
@given(data=st.data())
def test_garbled_config_text_loads_or_raises_model_error(fuzz_dir, tiny_base, build_spy, data):
    text = json.dumps(tiny_base).encode()
    cut = data.draw(st.integers(0, len(text)))
    how = data.draw(st.sampled_from(["truncate", "insert", "overwrite"]))
    junk_bytes = data.draw(st.binary(min_size=1, max_size=8))
    if how == "truncate":
        text = text[:cut]
    elif how == "insert":
        text = text[:cut] + junk_bytes + text[cut:]
    else:
        text = text[:cut] + junk_bytes + text[cut + len(junk_bytes):]
    (fuzz_dir / "config.json").write_bytes(text)
    _load_or_model_error(fuzz_dir)


@FUZZ
@given(name=st.sampled_from(sorted(SHIPPED_CONFIGS)), data=st.data())
def test_accepted_shipped_config_mutations_always_build(name, data):
    config = data.draw(mutated(SHIPPED_CONFIGS[name]))
    try:
        validate_config(config, where=f"{name}/config.json")
    except ModelError as e:
        assert f"{name}/config.json" in str(e)
        return
    n = parameter_count(config)
    assert n <= MAX_PARAMETERS
    if n > BUILD_LIMIT:
        return
    from engine.config import ensemble_members

    ae, net = PerturbModel.build_modules(config)
    nets = [net] + [PerturbModel.build_net(config) for _ in range(ensemble_members(config) - 1)]
    assert sum(t.numel() for m in (ae, *nets) for t in m.state_dict().values()) == n
    model = PerturbModel(config, ae, nets, device="cpu")
    assert model.members == ensemble_members(config)
    assert model.latent_dim == config["architecture"]["latent_dim"]


def test_the_unmutated_bases_are_valid(tiny_model_dir, tiny_base):
    assert PerturbModel.load(tiny_model_dir, device="cpu").genes == tiny_base["genes"]
    for name, config in SHIPPED_CONFIGS.items():
        assert validate_config(copy.deepcopy(config), where=name) == config
