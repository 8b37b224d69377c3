"""Typed configuration (issue 9 #1): one source of truth for defaults, overrides by name."""

from __future__ import annotations

import inspect

import pytest

from engine import config as cfg
from engine.config import ArchConfig, ModelConfig, SamplingConfig, TrainConfig


def test_registries_are_the_engines():
    from engine.diffusion.schedules import OBJECTIVES
    from engine.nn.blocks import BACKBONES

    assert tuple(BACKBONES) == tuple(cfg.BACKBONE_KW)
    assert tuple(OBJECTIVES) == cfg.OBJECTIVE_NAMES


def test_module_defaults_are_the_config_defaults():
    from engine.models.autoencoder import NBAutoencoder
    from engine.nn.blocks import BACKBONES

    for name, cls in BACKBONES.items():
        params = inspect.signature(cls).parameters
        for key, value in cfg.BACKBONE_DEFAULTS[name].items():
            assert params[key].default == value, (name, key)
    assert inspect.signature(NBAutoencoder).parameters["hidden"].default == ArchConfig.ae_hidden


def test_default_model_config_is_what_v1_training_wrote():
    mc = ModelConfig()
    assert mc.arch.backbone_kw == {"width": 128, "depth": 4, "dropout": 0.0}
    assert (mc.arch.latent_dim, mc.arch.ae_hidden, mc.arch.cond_dim) == (32, 128, 128)
    assert mc.sampling == SamplingConfig(steps=10, guidance=1.0, batch_size=2048)
    t = ModelConfig.from_overrides("transformer")
    assert t.arch.backbone_kw == {"width": 64, "depth": 3, "tokens": 8, "heads": 4}


def test_transformer_honours_width_and_depth():
    mc = ModelConfig.from_overrides("transformer", width=32, depth=2, steps=8)
    assert mc.arch.backbone_kw == {"width": 32, "depth": 2, "tokens": 8, "heads": 4}
    assert mc.sampling.steps == 8
    assert mc.hyperparameters()["width"] == 32


def test_overrides_reach_their_section():
    mc = ModelConfig.from_overrides("mlp", latent_dim=8, flow_steps=5, guidance=2.0,
                                    latent_sampling=False)
    assert mc.arch.latent_dim == 8 and mc.train.flow_steps == 5
    assert mc.sampling.guidance == 2.0 and mc.train.latent_sampling is False


def test_unknown_and_misplaced_options_raise():
    with pytest.raises(TypeError, match=r"unknown training options: \['widht'\]"):
        ModelConfig.from_overrides("mlp", widht=3)
    with pytest.raises(TypeError, match=r"the mlp backbone has no option 'tokens'"):
        ModelConfig.from_overrides("mlp", tokens=4)
    with pytest.raises(ValueError, match=r"backbone must be one of mlp, transformer, ssm, pathway-transformer, got 'rnn'"):
        ModelConfig.from_overrides("rnn")
    with pytest.raises(ValueError, match=r"objective must be one of"):
        ModelConfig.from_overrides("mlp", objective="score")
    with pytest.raises(ValueError, match=r"flow_steps must be at least 1"):
        TrainConfig(flow_steps=0)


def test_to_dict_from_dict_round_trip():
    mc = ModelConfig.from_overrides("transformer", width=48, heads=3, ae_lr=5e-4, steps=12)
    config = {"format_version": 2, **mc.to_dict()}
    assert ModelConfig.from_dict(config) == mc


def test_train_model_honours_transformer_width(synthetic, schema):
    from engine.train import train_model

    m = train_model(synthetic.copy(), schema, None, backbone="transformer", device="cpu",
                    ae_max_steps=5, flow_steps=2, latent_dim=4, ae_hidden=16, cond_dim=16,
                    width=24, depth=1, heads=2, tokens=2)
    assert m.config["architecture"]["backbone_kw"] == {"width": 24, "depth": 1, "tokens": 2,
                                                       "heads": 2}
    assert m.net.backbone.width == 24 and len(m.net.backbone.blocks) == 1
    assert m.config["training"]["hyperparameters"]["width"] == 24
