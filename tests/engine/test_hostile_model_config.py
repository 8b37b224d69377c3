"""Issue 15 #5: a model's config.json is validated completely before any module is built.

Each malformed config below gave a traceback (or was silently accepted, or allocated gigabytes)
before the fix; now each is a ModelError naming the entry, and nothing is constructed.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.checkpoint import MAX_CONFIG_BYTES, read_card, read_config
from engine.config import (
    BACKBONE_DEFAULTS,
    BACKBONE_KW,
    DISPERSION_NAMES,
    FREQ_DIM,
    MAX_PARAMETERS,
    OBJECTIVE_NAMES,
    ensemble_members,
    parameter_count,
    validate_config,
)
from engine.errors import ModelError
from engine.model import PerturbModel

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "resources" / "models").glob("*/"))


@pytest.fixture()
def model_dir(tiny_model_dir, tmp_path):
    """A private copy of the tiny model, free to damage."""
    dest = tmp_path / "m"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.fixture()
def no_build(monkeypatch):
    """Fail the test if any module is built (the config must be refused before that)."""
    def refuse(config):
        raise AssertionError("build_modules was called for a config that should be refused")
    monkeypatch.setattr(PerturbModel, "build_modules", staticmethod(refuse))


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _write(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config))


def _set(path: str, value):
    """A mutation setting ``a.b.c`` (or ``a.b[0]``) to ``value``."""
    def f(c):
        *parents, last = path.split(".")
        obj = c
        for p in parents:
            obj = obj[p]
        if last.endswith("]"):
            key, idx = last[:-1].split("[")
            obj[key][int(idx)] = value
        else:
            obj[last] = value
    return f


def _drop(path: str):
    def f(c):
        *parents, last = path.split(".")
        obj = c
        for p in parents:
            obj = obj[p]
        del obj[last]
    return f


def _transformer(width, heads):
    def f(c):
        c["architecture"].update(backbone="transformer", backbone_kw={
            "width": width, "depth": 1, "tokens": 2, "heads": heads})
    return f


MALFORMED = [
    ("format_version text", _set("format_version", "abc"), r"format_version must be a whole"),
    ("format_version 0", _set("format_version", 0), r"format_version must be between 1 and 3, got the number 0"),
    ("format_version newer", _set("format_version", 7), r"newer Perturb Studio"),
    ("format wrong", _set("format", "pickle"), r"not a Perturb Studio model config"),
    ("missing vocab", _drop("vocab"), r"lacks required entries: vocab"),
    ("depth 10^7", _set("architecture.backbone_kw.depth", 10**7),
     r"backbone_kw.depth must be between 0 and 256, got the number 10000000"),
    ("ae_hidden 10^6", _set("architecture.ae_hidden", 10**6), r"architecture.ae_hidden must be"),
    ("latent_dim 10^9", _set("architecture.latent_dim", 10**9),
     r"architecture.latent_dim must be between 1 and 1,024"),
    ("latent_dim text", _set("architecture.latent_dim", "8"), r"latent_dim must be a whole number"),
    ("latent_dim float", _set("architecture.latent_dim", 8.5), r"got the number 8.5"),
    ("latent_dim negative", _set("architecture.latent_dim", -3), r"got the number -3"),
    ("latent_dim bool", _set("architecture.latent_dim", True), r"got the boolean true"),
    ("cond_dim null", _set("architecture.cond_dim", None), r"cond_dim must be a whole .* null"),
    ("unknown objective", _set("architecture.objective", "magic"),
     r"objective must be one of rectified_flow, ddpm, got the text 'magic'"),
    ("unknown backbone", _set("architecture.backbone", "rnn"), r"backbone must be one of mlp"),
    ("unknown dispersion", _set("architecture.dispersion", "cell"), r"dispersion must be one of"),
    ("unknown backbone_kw", _set("architecture.backbone_kw.colour", 3),
     r"backbone_kw has an unknown entry 'colour'"),
    ("unknown architecture key", _set("architecture.wings", 2), r"unknown entry 'wings'"),
    ("architecture list", _set("architecture", []), r"architecture must be a JSON object"),
    ("heads do not divide width", _transformer(10, 3), r"width 10 must be a multiple of heads 3"),
    ("dropout 5", _set("architecture.backbone_kw.dropout", 5.0), r"dropout must be at least 0"),
    ("ssm d_state 10^6", lambda c: c["architecture"].update(
        backbone="ssm", backbone_kw={"d_state": 10**6}),
     r"backbone_kw.d_state must be between 1 and 256, got the number 1000000"),
    ("ssm heads do not divide the inner width", lambda c: c["architecture"].update(
        backbone="ssm", backbone_kw={"width": 10, "expand": 2, "heads": 3}),
     r"expand x width \(2 x 10 = 20\) must be a multiple of heads 3"),
    ("ssm option on the mlp", _set("architecture.backbone_kw.d_conv", 4),
     r"backbone_kw has an unknown entry 'd_conv'"),
    ("unknown space key", _set("space.colour", 1), r"space has an unknown entry 'colour'"),
    ("space list", _set("space", [1]), r"space must be a JSON object, got a list of 1 item"),
    ("unknown vocab key", _set("vocab.colour", 1), r"vocab has an unknown entry 'colour'"),
    ("vocab level without values", lambda c: c["vocab"]["levels"].append("donor"),
     r"no values for the level 'donor'"),
    ("vocab target number", _set("vocab.targets[0]", 5), r"vocab.targets\[0\] must be text"),
    ("vocab duplicate target", lambda c: c["vocab"]["targets"].append(c["vocab"]["targets"][0]),
     r"vocab.targets lists 'A' more than once"),
    ("space target unknown to vocab", lambda c: c["space"]["targets"].append("ZZZ"),
     r"space.targets lists 'ZZZ', which the model's vocab.targets lacks"),
    ("space max_perturbations above vocab", _set("space.max_perturbations", 5),
     r"space.max_perturbations is 5, more than the 2"),
    ("dose_scale 0", _set("vocab.dose_scale", 0), r"vocab.dose_scale must be above 0"),
    ("has_dose text", _set("space.has_dose", "yes"), r"space.has_dose must be true or false"),
    ("seen junk", _set("space.seen", [{"perturbations": [{"dose": 1}]}]),
     r"space.seen\[0\].perturbations\[0\] lacks the entries: target"),
    ("gene number", _set("genes[0]", 5), r"genes\[0\] must be text, got the number 5"),
    ("genes text", _set("genes", "ABC"), r"genes must be a list of names"),
    ("genes empty", _set("genes", []), r"genes must hold 1 to 100,000 names, holds 0"),
    ("gene duplicate", lambda c: c["genes"].__setitem__(1, c["genes"][0]),
     r"genes lists 'G0' more than once"),
    ("latent_stats NaN", _set("latent_stats.mean[0]", float("nan")),
     r"latent_stats.mean\[0\] must be a finite number, got the number nan"),
    ("latent_stats inf", _set("latent_stats.std[2]", float("inf")), r"latent_stats.std\[2\]"),
    ("latent_stats short", _set("latent_stats.std", [1.0]),
     r"latent_stats.std must be a list of 9 numbers"),
    ("latent_stats std 0", _set("latent_stats.std[0]", 0.0), r"latent_stats.std\[0\] must be"),
    ("sampling batch_size 0", _set("sampling.batch_size", 0),
     r"sampling.batch_size must be between 1 and 65,536, got the number 0"),
    ("sampling batch_size -5", _set("sampling.batch_size", -5), r"sampling.batch_size"),
    ("sampling steps text", _set("sampling.steps", "abc"), r"sampling.steps must be a whole"),
    ("sampling guidance NaN", _set("sampling.guidance", float("nan")), r"sampling.guidance"),
    ("density negative", _set("density", -1.0), r"density must be above 0"),
    ("name number", _set("name", 5), r"name must be text, got the number 5"),
    ("schema context_keys number", _set("schema.context_keys", 3), r"schema.context_keys must"),
    ("config empty", lambda c: c.clear(), r"is not a Perturb Studio model config"),
]


@pytest.mark.parametrize("mutate, match", [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_config_is_refused_before_building(model_dir, no_build, mutate, match):
    config = _config(model_dir)
    mutate(config)
    _write(model_dir, config)
    with pytest.raises(ModelError, match=match) as info:
        PerturbModel.load(model_dir, device="cpu")
    assert str(model_dir / "config.json") in str(info.value)


def test_parameter_budget_is_enforced_before_allocation(model_dir, no_build):
    config = _config(model_dir)
    config["architecture"]["ae_hidden"] = 16_384          # each size in range, the total not
    _write(model_dir, config)
    n = parameter_count(config)
    assert n > MAX_PARAMETERS
    with pytest.raises(ModelError, match=rf"would have {n:,} parameters .*at most 200,000,000"):
        PerturbModel.load(model_dir, device="cpu")


def test_weights_too_small_for_the_architecture_refused_before_building(model_dir, no_build):
    config = _config(model_dir)
    config["architecture"]["ae_hidden"] = 2_048           # 4M parameters; the file holds 85k
    _write(model_dir, config)
    with pytest.raises(ModelError, match="the config and the weights do not belong together"):
        read_config(model_dir)


def test_deeply_nested_json_is_refused(model_dir):
    text = json.dumps(_config(model_dir))[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (model_dir / "config.json").write_text(text)
    with pytest.raises(ModelError, match="nested too deeply"):
        PerturbModel.load(model_dir, device="cpu")
    config = json.loads(text.replace("[" * 100_000, "[").replace("]" * 100_000, "]"))
    junk: list = []
    for _ in range(40):
        junk = [junk]
    config["x"] = junk                                    # parses, but deeper than allowed
    _write(model_dir, config)
    with pytest.raises(ModelError, match="nested more than 32 levels deep"):
        PerturbModel.load(model_dir, device="cpu")


def test_config_that_is_not_an_object_is_refused(model_dir):
    (model_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="the config must be a JSON object, not a list of 2 items"):
        read_config(model_dir)


def test_number_with_thousands_of_digits_is_refused(model_dir):
    text = json.dumps(_config(model_dir)).replace('"latent_dim": 8', '"latent_dim": ' + "9" * 5000)
    (model_dir / "config.json").write_text(text)
    with pytest.raises(ModelError, match="not valid JSON: Exceeds the limit"):
        PerturbModel.load(model_dir, device="cpu")


def test_latin1_config_is_refused_naming_the_byte(model_dir):
    config = _config(model_dir)
    config["name"] = "Müller"
    (model_dir / "config.json").write_bytes(json.dumps(config, ensure_ascii=False)
                                            .encode("latin-1"))
    with pytest.raises(ModelError, match=r"config.json is not valid JSON: it is not UTF-8 text "
                                         r"\(byte 0xfc"):
        PerturbModel.load(model_dir, device="cpu")


def test_config_with_utf8_bom_loads(model_dir):
    (model_dir / "config.json").write_bytes(b"\xef\xbb\xbf" + (model_dir / "config.json")
                                            .read_bytes())
    assert PerturbModel.load(model_dir, device="cpu").genes[0] == "G0"


def test_oversized_config_is_refused_unread(model_dir):
    with open(model_dir / "config.json", "a") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ModelError, match=r"config.json is 16.0 MiB; a model's config.json is at "
                                         r"most 16 MiB"):
        read_config(model_dir)


def test_latin1_card_is_read_with_replacement_characters(model_dir):
    (model_dir / "card.json").write_bytes('{"summary": "Müller lab"}'.encode("latin-1"))
    model = PerturbModel.load(model_dir, device="cpu")
    assert model.card["summary"] == "M\ufffdller lab"


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "must hold a JSON object"),
    ("{broken", "card.json is not valid JSON"),
    ('{"a": ' + "[" * 50 + "]" * 50 + "}", "nested more than 32 levels"),
])
def test_malformed_card_is_a_model_error(model_dir, text, match):
    (model_dir / "card.json").write_text(text)
    with pytest.raises(ModelError, match=match):
        read_card(model_dir)


def _built_parameters(config: dict) -> int:
    """Weights of the built modules: the autoencoder plus one flow network per member."""
    ae, net = PerturbModel.build_modules(config)
    count = (lambda m: sum(t.numel() for t in m.state_dict().values()))  # noqa: E731
    return count(ae) + ensemble_members(config) * count(net)


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_validate_and_count_their_parameters(folder):
    config = read_config(folder)
    assert parameter_count(config) == _built_parameters(config)


@pytest.mark.parametrize("arch", [
    {"backbone": "transformer", "backbone_kw": {"width": 24, "depth": 2, "tokens": 3,
                                                "heads": 4}, "dispersion": "gene-cell"},
    {"backbone": "transformer", "backbone_kw": {}},
    {"backbone": "mlp", "backbone_kw": {"depth": 0, "dropout": 0.1}, "objective": "ddpm"},
    {"backbone": "mlp", "backbone_kw": {}, "latent_dim": 5, "ae_hidden": 33, "cond_dim": 7},
    {"backbone": "ssm", "backbone_kw": {}},
    {"backbone": "ssm", "backbone_kw": {"width": 33, "depth": 2, "tokens": 3, "d_state": 5,
                                        "d_conv": 2, "expand": 3, "heads": 11},
     "dispersion": "gene-cell"},
    {"backbone": "ssm", "backbone_kw": {"width": 8, "depth": 0, "tokens": 1, "d_state": 1,
                                        "d_conv": 1, "expand": 1, "heads": 1}, "cond_dim": 7},
], ids=["transformer-gene-cell", "transformer-defaults", "mlp-depth-0", "mlp-odd-sizes",
        "ssm-defaults", "ssm-odd-sizes", "ssm-smallest"])
def test_parameter_count_is_exact(tiny_model_dir, arch):
    config = copy.deepcopy(_config(tiny_model_dir))
    config["architecture"].update(arch)
    d = config["architecture"]["latent_dim"] + 1
    config["latent_stats"] = {"mean": [0.0] * d, "std": [1.0] * d}
    config.pop("latent_means", None)          # its rows have the tiny model's latent width
    config["vocab"]["levels"] = ["tissue", "cell_type"]
    config["vocab"]["level_values"]["tissue"] = ["blood", "brain", "bone"]
    validate_config(config, where="test")
    assert parameter_count(config) == _built_parameters(config)


def test_validator_names_match_the_engine_registries():
    from engine.diffusion.schedules import OBJECTIVES
    from engine.models.autoencoder import DISPERSIONS
    from engine.nn.blocks import BACKBONES, TimestepEmbedder

    assert set(OBJECTIVE_NAMES) == set(OBJECTIVES)
    assert set(DISPERSION_NAMES) == set(DISPERSIONS)
    assert set(BACKBONE_KW) == set(BACKBONES) == set(BACKBONE_DEFAULTS)
    for name, cls in BACKBONES.items():
        params = inspect.signature(cls.__init__).parameters
        kw = {k: p.default for k, p in params.items() if k not in ("self", "state_dim",
                                                                   "cond_dim")}
        assert kw == BACKBONE_DEFAULTS[name], name
        assert set(kw) == set(BACKBONE_KW[name]), name
    assert inspect.signature(TimestepEmbedder.__init__).parameters["freq_dim"].default == FREQ_DIM


def test_huge_architectures_stay_within_a_memory_limit(tiny_model_dir, tmp_path):
    """Under a 2.5 GiB address-space limit (an allocation beyond it fails instead of swapping),
    each huge architecture is a ModelError: nothing large is ever allocated."""
    cases = {"depth": ("backbone_kw", "depth", 10**7), "ae_hidden": (None, "ae_hidden", 10**6),
             "latent_dim": (None, "latent_dim", 10**9), "budget": (None, "ae_hidden", 16_384)}
    for name, (sub, key, value) in cases.items():
        folder = tmp_path / name
        shutil.copytree(tiny_model_dir, folder)
        config = _config(folder)
        (config["architecture"][sub] if sub else config["architecture"])[key] = value
        _write(folder, config)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (5 << 29, 5 << 29))
        import torch
        torch.set_num_threads(1)
        from engine.errors import ModelError
        from engine.model import PerturbModel
        for name in {sorted(cases)!r}:
            try:
                PerturbModel.load({str(tmp_path)!r} + "/" + name, device="cpu")
                print(name, "LOADED")
            except ModelError as e:
                print(name, "ModelError", str(e).splitlines()[0])
        # VmHWM: this process's own peak (ru_maxrss would inherit the parent's peak at fork,
        # which is over 2 GiB late in a full test run)
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")]
        print("maxrss_kb", int(hwm[0].split()[1]) if hwm else
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    for name in cases:
        assert lines[name].startswith("ModelError"), (name, lines[name])
    assert "would have" in lines["budget"] and "parameters" in lines["budget"]
    assert int(lines["maxrss_kb"]) < 2 << 20, lines["maxrss_kb"]   # under 2 GiB resident
