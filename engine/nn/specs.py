"""The backbone registry: one torch-free spec per backbone, the single source of its facts.

Each :class:`BackboneSpec` names the module that implements the backbone, its options (kind,
allowed range, default, the v1 default), a check across options, and the exact number of
weights it holds, computed from the sizes alone. Everything that lists or checks backbones reads
:data:`BACKBONE_SPECS`: config validation and :func:`engine.config.parameter_count`, the typed
config's defaults and overrides, ``engine.nn.blocks.BACKBONES`` (and through it the CLI's
``--backbone`` choices) and ``engine.BACKBONE_NAMES`` (the app's Train page). Adding a backbone
means writing its module and adding one entry here.

This module imports nothing but the standard library, so configs are validated (and a hostile
config refused) before torch is imported or anything is allocated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    """One constructor keyword of a backbone: ``kind`` "int" (a whole number) or "float",
    allowed range ``low..high``, the default (what a v2/v3 config means when it is absent, and
    the module constructor's default), and ``v1_default`` when format-1 configs meant another."""

    kind: str
    low: float
    high: float
    default: int | float
    help: str = ""
    v1_default: int | float | None = None


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    module: str                                   # "engine.nn.blocks:MLPBackbone"
    summary: str                                  # one line for help texts and tooltips
    options: dict[str, Option]
    parameters: Callable[[int, int, Mapping], int]   # (state_dim, cond_dim, full kw) -> weights
    check: Callable[[Mapping], str | None] = field(default=lambda kw: None)
    #: "module:function" run once the autoencoder is fitted, for a backbone that needs it
    #: (engine.train): ``prepare(ae, states, genes, config)`` may change ``config`` and
    #: returns an object whose ``apply(net)`` completes each freshly built network
    prepare: str | None = None

    def defaults(self, *, v1: bool = False) -> dict:
        """The full keyword set an empty ``backbone_kw`` means (format 1 if ``v1``)."""
        return {k: (o.v1_default if v1 and o.v1_default is not None else o.default)
                for k, o in self.options.items()}

    def load(self) -> type:
        """The module class (imports torch)."""
        module, _, attr = self.module.partition(":")
        return getattr(importlib.import_module(module), attr)

    def prepare_after_autoencoder(self, ae, states, genes, config: dict):
        """Run :attr:`prepare` (None for a backbone without one; imports torch)."""
        if self.prepare is None:
            return None
        module, _, attr = self.prepare.partition(":")
        return getattr(importlib.import_module(module), attr)(ae, states, genes, config)


# -- exact parameter counts (each mirrors its module; tests/engine/test_hostile_model_config.py
#    checks them against the built modules) -----------------------------------------------------
def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _final(w: int, c: int, out: int) -> int:                  # blocks.FinalLayer
    return _linear(c, 2 * w) + _linear(w, out)


def _mlp_params(s: int, c: int, kw: Mapping) -> int:
    w, depth = int(kw["width"]), int(kw["depth"])
    block = _linear(w, 2 * w) + _linear(2 * w, w) + _linear(c, 3 * w)            # FiLMBlock
    return _linear(s, w) + depth * block + _final(w, c, s)


def _tokens_io(s: int, c: int, w: int, k: int) -> int:
    """Projection to K tokens + positions, the final layer, projection back."""
    return _linear(s, k * w) + k * w + _final(w, c, w) + _linear(k * w, s)


def _transformer_params(s: int, c: int, kw: Mapping) -> int:
    w, depth, k = int(kw["width"]), int(kw["depth"]), int(kw["tokens"])
    block = (3 * w * w + 3 * w + _linear(w, w)                    # attention in / out
             + _linear(w, 2 * w) + _linear(2 * w, w) + _linear(c, 6 * w))         # DiTBlock
    return _tokens_io(s, c, w, k) + depth * block


def _ssm_params(s: int, c: int, kw: Mapping) -> int:
    w, depth, k = int(kw["width"]), int(kw["depth"]), int(kw["tokens"])
    n, conv, e = int(kw["d_state"]), int(kw["d_conv"]), int(kw["expand"]) * int(kw["width"])
    h = int(kw["heads"])
    block = (_linear(c, 3 * w)                                    # AdaLN-Zero modulation
             + _linear(w, 2 * e, bias=False)                      # in_proj -> x, z
             + e * conv + e                                       # depthwise causal conv
             + _linear(e, h + 2 * n, bias=False)                  # x_proj -> dt, B, C
             + 3 * h                                              # dt_bias, A_log, D
             + _linear(e, w, bias=False))                         # out_proj
    return _tokens_io(s, c, w, k) + depth * block


def _pathway_params(s: int, c: int, kw: Mapping) -> int:
    """Pathway tokens + the whole-state token (engine.nn.pathways), DiT blocks; the fixed score
    map (K x state, bias, centre, scale) is stored with the weights."""
    w, depth, k = int(kw["width"]), int(kw["depth"]), int(kw["tokens"])
    block = (3 * w * w + 3 * w + _linear(w, w)
             + _linear(w, 2 * w) + _linear(2 * w, w) + _linear(c, 6 * w))
    tokens = k * w + _linear(s, w) + (k + 1) * w + _final(w, c, w) + _linear((k + 1) * w, s)
    return tokens + depth * block + k * s + 3 * k


def _heads_divide_width(kw: Mapping) -> str | None:
    if int(kw["width"]) % int(kw["heads"]):
        return (f"width {kw['width']} must be a multiple of heads {kw['heads']} (attention "
                "splits the width between heads)")
    return None


def _heads_divide_inner(kw: Mapping) -> str | None:
    inner = int(kw["expand"]) * int(kw["width"])
    if inner % int(kw["heads"]):
        return (f"expand x width ({kw['expand']} x {kw['width']} = {inner}) must be a multiple "
                f"of heads {kw['heads']} (the scan splits the inner channels between heads)")
    return None


_WIDTH = "channels of the residual stream"
_DEPTH = "blocks"
_TOKENS = "latent tokens the state is projected to"

BACKBONE_SPECS: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (
        BackboneSpec(
            "mlp", "engine.nn.blocks:MLPBackbone",
            "residual MLP with FiLM / AdaLN-Zero modulation (fastest on CPU)",
            {"width": Option("int", 1, 16_384, 128, _WIDTH, v1_default=256),
             "depth": Option("int", 0, 256, 4, _DEPTH),
             "dropout": Option("float", 0.0, 0.99, 0.0, "dropout inside each block")},
            _mlp_params),
        BackboneSpec(
            "transformer", "engine.nn.blocks:TransformerBackbone",
            "DiT blocks (self-attention, AdaLN-Zero) over learned latent tokens",
            {"width": Option("int", 1, 4_096, 64, _WIDTH),
             "depth": Option("int", 0, 256, 3, _DEPTH),
             "tokens": Option("int", 1, 1_024, 8, _TOKENS),
             "heads": Option("int", 1, 64, 4, "attention heads (must divide width)")},
            _transformer_params, _heads_divide_width),
        BackboneSpec(
            "ssm", "engine.nn.ssm:SSMBackbone",
            "selective state-space (Mamba-style) blocks, AdaLN-Zero, over learned latent tokens",
            {"width": Option("int", 1, 4_096, 64, _WIDTH),
             "depth": Option("int", 0, 256, 3, _DEPTH),
             "tokens": Option("int", 1, 1_024, 8, _TOKENS),
             "d_state": Option("int", 1, 256, 16, "state size per channel (N)"),
             "d_conv": Option("int", 1, 64, 4, "kernel of the causal depthwise convolution"),
             "expand": Option("int", 1, 16, 2, "inner channels = expand x width"),
             "heads": Option("int", 1, 256, 4, "scan heads, each with its own step size and "
                                               "decay (must divide expand x width)")},
            _ssm_params, _heads_divide_inner),
        BackboneSpec(
            "pathway-transformer", "engine.nn.pathways:PathwayTokenBackbone",
            "DiT blocks over pathway tokens: one token per Hallmark/Reactome gene set (its "
            "score, read from the latent by a fixed map) + one token for the whole state",
            {"width": Option("int", 1, 4_096, 64, _WIDTH),
             "depth": Option("int", 0, 256, 3, _DEPTH),
             "tokens": Option("int", 1, 256, 24, "pathway tokens: at most this many gene sets "
                                                 "(fewer when fewer qualify)"),
             "heads": Option("int", 1, 64, 4, "attention heads (must divide width)"),
             "min_genes": Option("int", 1, 1_000, 10, "a gene set qualifies with at least "
                                                      "this many of the model's genes")},
            _pathway_params, _heads_divide_width, prepare="engine.nn.pathways:prepare"),
    )
}

BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_SPECS)
#: every option name of any backbone (the flat ``train_model(**overrides)`` names that go to it)
BACKBONE_OPTIONS: frozenset[str] = frozenset(
    k for spec in BACKBONE_SPECS.values() for k in spec.options)


def backbone_classes() -> dict[str, type]:
    """Name -> module class, in registry order (imports torch)."""
    return {name: spec.load() for name, spec in BACKBONE_SPECS.items()}
