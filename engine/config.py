"""Model configs (``config.json``): every entry a loader reads, checked before anything is built.

:func:`validate_config` checks the whole config (types, ranges, unknown keys, the consistency of
the vocabularies, and a parameter budget computed from the sizes) and raises one
:class:`ModelError` naming the file, the entry and what is allowed. Nothing here imports torch,
so listing models stays cheap and a hostile config can never allocate anything: the
:func:`parameter_count` of the architecture is known, exactly, before any module exists.

Backbones (names, options with their ranges and defaults, parameter formulas) come from the
torch-free registry :data:`engine.nn.specs.BACKBONE_SPECS`. The names of objectives and
dispersions are repeated here (their modules import torch);
``tests/engine/test_hostile_model_config.py`` checks that they match the engine's registries and
that :func:`parameter_count` equals the parameters of the built modules.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn

from .anchor import ANCHOR_KINDS, MAGNITUDES, MATCHES, WEIGHTS
from .errors import ModelError
from .nn.specs import BACKBONE_NAMES as BACKBONE_NAMES  # re-exported: engine.BACKBONE_NAMES
from .nn.specs import BACKBONE_OPTIONS, BACKBONE_SPECS

#: backbone name -> one line saying what it is (the Train page's tooltips)
BACKBONE_SUMMARIES: dict[str, str] = {n: s.summary for n, s in BACKBONE_SPECS.items()}

FORMAT = "perturb-studio-model"
FORMAT_VERSION = 3                # 3: ensembles (``ensemble``, member-prefixed flow weights);
                                  # 2: typed config (ModelConfig), read as one member;
                                  # 1 is read via upgrade_v1
MAX_MEMBERS = 64                  # ensemble members of one model

MAX_PARAMETERS = 200_000_000      # 800 MB of float32 weights; the shipped models have < 3M
MAX_GENES = 100_000
MAX_VALUES = 100_000              # entries of one vocabulary list (targets, cell types, ...)
MAX_LEVELS = 32                   # hierarchy levels (organism > tissue > ... > cell type)
MAX_PERTURBATIONS = 64            # perturbations at once
MAX_SEEN = 1_000_000              # trained conditions listed in ``space.seen``
MAX_NAME = 1_000                  # characters of one gene / label / name
MAX_NESTING = 32                  # JSON nesting depth (the shipped configs use 5)
MAX_STEPS = 1_000                 # sampling steps (as engine.model accepts)
MAX_GUIDANCE = 20.0
MAX_BATCH = 65_536                # cells per sampling batch
FREQ_DIM = 128                    # TimestepEmbedder's sinusoidal features (engine.nn.blocks)

OBJECTIVE_NAMES = ("rectified_flow", "ddpm")            # engine.diffusion.schedules.OBJECTIVES
DISPERSION_NAMES = ("gene", "gene-cell")                # engine.models.autoencoder.DISPERSIONS
# Views of the backbone registry (engine.nn.specs), kept under their old names.
# BACKBONE_KW: keyword -> (kind, low, high); "int" is a whole number.
BACKBONE_KW: dict[str, dict[str, tuple[str, float, float]]] = {
    name: {k: (o.kind, o.low, o.high) for k, o in spec.options.items()}
    for name, spec in BACKBONE_SPECS.items()}
# What an absent backbone_kw entry means: in a v2/v3 config these defaults, which are also the
# module constructors' and what a default training writes; in a v1 config the v1 module
# defaults (the MLP was 256 wide there, while v1 training wrote 128 explicitly).
BACKBONE_DEFAULTS = {name: spec.defaults() for name, spec in BACKBONE_SPECS.items()}
V1_BACKBONE_DEFAULTS = {name: spec.defaults(v1=True) for name, spec in BACKBONE_SPECS.items()}
V1_SAMPLING_STEPS = 20            # engine.model.default_steps of v1 when sampling.steps is absent
ARCH_INTS = {"latent_dim": (1, 1_024), "ae_hidden": (1, 16_384), "cond_dim": (1, 4_096)}
ARCH_KEYS = {"latent_dim", "ae_hidden", "cond_dim", "backbone", "backbone_kw", "objective",
             "dispersion", "target_prior", "prior_dim"}
TARGET_PRIOR_NAMES = ("none", "gene_sets")     # engine.conditions.embedders.PerturbationEmbedder
TARGET_PRIORS_KEYS = {"resource", "format_version", "dims", "n_genes", "sha256", "symbols",
                      "note"}
REQUIRED_KEYS = ("format", "format_version", "genes", "architecture", "vocab", "space",
                 "latent_stats")
VOCAB_KEYS = {"levels", "level_values", "targets", "types", "max_perturbations", "dose_scale"}
SPACE_KEYS = {"cell_types", "targets", "perturbation_types", "target_types", "context_levels",
              "context_values", "has_dose", "dose_range", "max_perturbations", "control_label",
              "seen", "simulated_dose"}
SAMPLING_KEYS = {"steps", "guidance", "batch_size", "guidance_by_evidence", "anchor"}
ANCHOR_KEYS = {"kinds", "refine", "guidance", "weights", "tau", "match", "magnitude", "gain",
               "source"}
LATENT_MEANS_KEYS = {"conditions", "mean", "n_cells"}
ENSEMBLE_KEYS = {"members", "seeds", "bootstrap", "shared", "calibration", "calibration_note"}
EVIDENCE_KINDS = ("population", "measured", "new_combination", "new_cell_type",
                  "new_combination_new_cell_type", "new_gene",
                  "beyond_evidence")                                   # engine.effects

_MISSING = object()


def validate_config(config: dict, *, where: str) -> dict:
    """Check a parsed ``config.json`` completely; return it unchanged.

    ``where`` names the file in messages (e.g. ``models/x/config.json``). Checked: the format
    and its version, the gene list, the architecture (known backbone, objective and dispersion,
    every size a whole number in range, a parameter budget of :data:`MAX_PARAMETERS`), the
    condition vocabulary and space (types, unknown keys, consistency with each other),
    ``latent_stats`` (finite, the right length, std > 0), ``sampling``, ``density`` and
    ``schema``; and the JSON nesting depth. Entries no loader reads (``training``,
    ``preprocessing``, ...) may be anything JSON holds, within the nesting limit.

    Raises
    ------
    ModelError
        Naming ``where``, the entry (``architecture.backbone_kw.depth``) and what is allowed.
    """
    v = _Validator(where)
    if not isinstance(config, dict):
        v.fail("the config", f"must be a JSON object, not {_kind(config)}")
    v.nesting(config)
    if config.get("format") != FORMAT:
        raise ModelError(f"{where} is not a Perturb Studio model config (format != {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ModelError(f"{where} lacks required entries: {', '.join(missing)}")
    version = config["format_version"]
    if type(version) is int and version > FORMAT_VERSION:
        raise ModelError(f"{where} was saved by a newer Perturb Studio (model format "
                         f"{version}, this version reads up to {FORMAT_VERSION}); please update "
                         "the app")
    v.integer("format_version", version, 1, FORMAT_VERSION)
    for key in ("name", "engine_version"):
        if config.get(key) is not None:
            v.string(key, config[key])
    genes = v.strings("genes", config["genes"], max_items=MAX_GENES, nonempty=True,
                      min_items=1)
    arch = v.architecture(config["architecture"], backbone_defaults(config))
    vocab = v.vocab(config["vocab"])
    v.space(config["space"], vocab)
    v.latent_stats(config["latent_stats"], arch["latent_dim"] + 1)
    if "sampling" in config:
        v.sampling(config["sampling"])
    if "ensemble" in config:
        v.ensemble(config["ensemble"])
    if "latent_means" in config:
        v.latent_means(config["latent_means"], arch["latent_dim"] + 1)
    if "pathway_tokens" in config or BACKBONE_SPECS[arch["backbone"]].prepare is not None:
        v.pathway_tokens(config.get("pathway_tokens", _MISSING),
                         {**backbone_defaults(config)[arch["backbone"]],
                          **arch.get("backbone_kw", {})})
    v.target_priors(config.get("target_priors"), arch, vocab)
    if "density" in config:
        v.number("density", config["density"], 0.0, 1.0, low_open=True)
    if config.get("schema") is not None:
        v.schema(config["schema"])
    for key in ("training", "preprocessing"):
        if key in config and not isinstance(config[key], dict):
            v.fail(key, f"must be a JSON object, got {_kind(config[key])}")
    n = parameter_count(config)
    if n > MAX_PARAMETERS:
        raise ModelError(f"{where}: the architecture would have {n:,} parameters "
                         f"({n * 4 / 2**30:.1f} GiB of weights) for {len(genes):,} genes; at most "
                         f"{MAX_PARAMETERS:,} are allowed. Nothing was built; the config is "
                         "damaged or not meant for this app")
    return config


# -- the parameter budget ---------------------------------------------------------------------
def _linear(i: int, o: int) -> int:
    return i * o + o


def _mlp(i: int, o: int) -> int:                      # engine.conditions.embedders._mlp
    return _linear(i, o) + _linear(o, o)


def backbone_defaults(config: Mapping) -> dict:
    """What absent ``backbone_kw`` entries mean for this config's format version."""
    return V1_BACKBONE_DEFAULTS if config.get("format_version") == 1 else BACKBONE_DEFAULTS


def ensemble_members(config: Mapping) -> int:
    """Members of a (validated) config's ensemble: 1 without an ``ensemble`` entry (v1, v2)."""
    ens = config.get("ensemble")
    return int(ens["members"]) if isinstance(ens, Mapping) else 1


def parameter_count(config: Mapping) -> int:
    """Exact number of weights the modules of a (validated) config hold: the autoencoder
    (``engine.models.autoencoder``) plus one flow network (``engine.models.flow``) per ensemble
    member, computed from the sizes alone, so a budget can be enforced before anything is
    allocated."""
    arch, vocab = config["architecture"], config["vocab"]
    g, d, h, c = (len(config["genes"]), int(arch["latent_dim"]), int(arch["ae_hidden"]),
                  int(arch["cond_dim"]))
    ae = (_linear(g, h) + 2 * h + _linear(h, h) + 2 * h + 2 * _linear(h, d)
          + _linear(d, h) + 2 * h + _linear(h, g) + g)
    if arch.get("dispersion", "gene") == "gene-cell":
        ae += _linear(h, g)
    level_sizes = [len(vocab.get("level_values", {}).get(lv, []))
                   for lv in vocab.get("levels", [])]
    cond = c + sum((n + 1) * c + _mlp(2 * c, c) for n in level_sizes)          # hierarchy
    cond += ((len(vocab.get("targets", [])) + 1) * c + (len(vocab.get("types", [])) + 1) * c
             + _mlp(1, c) + _mlp(3 * c, c))                                    # perturbation
    if arch.get("target_prior", "none") != "none":
        cond += _mlp(int(arch["prior_dim"]) + 1, c)                           # target priors
        # + the trained targets' prior rows, a buffer stored with the weights (prior_table)
        cond += (len(vocab.get("targets", [])) + 1) * (int(arch["prior_dim"]) + 1)
    cond += 2 * _mlp(c, c) + 2 * c                                             # set pooling
    time = _linear(FREQ_DIM, c) + _linear(c, c)
    name = arch["backbone"]
    kw = {**backbone_defaults(config)[name], **arch.get("backbone_kw", {})}
    net = BACKBONE_SPECS[name].parameters(d + 1, c, kw)                        # backbone
    return ae + ensemble_members(config) * (cond + time + net)


# -- checking ---------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return (f"the number {value}" if value.bit_length() <= 64
                else f"a {value.bit_length()}-bit number")
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}"
    if isinstance(value, dict):
        return f"an object with {len(value)} entr{'ies' if len(value) != 1 else 'y'}"
    return type(value).__name__


class _Validator:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, what: str) -> NoReturn:
        raise ModelError(f"{self.where}: {key} {what}")

    # -- scalars ----------------------------------------------------------------------------
    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        span = f"{low:,}" if low == high else f"between {low:,} and {high:,}"
        if type(value) is not int:
            self.fail(key, f"must be a whole number {span}, got {_kind(value)}")
        if not low <= value <= high:
            self.fail(key, f"must be {span}, got {_kind(value)}")
        return value

    def number(self, key: str, value: Any, low: float, high: float, *,
               low_open: bool = False) -> float:
        if type(value) not in (int, float) or (type(value) is float and
                                               not math.isfinite(value)):
            self.fail(key, f"must be a finite number, got {_kind(value)}")
        if not (low < value if low_open else low <= value) or value > high:
            self.fail(key, f"must be {'above' if low_open else 'at least'} {low:g} and at most "
                      f"{high:g}, got {_kind(value)}")
        return float(value)

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_kind(value)}")
        return value

    def string(self, key: str, value: Any, *, nonempty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(key, f"must be text, got {_kind(value)}")
        if nonempty and not value.strip():
            self.fail(key, "must not be empty")
        if len(value) > MAX_NAME:
            self.fail(key, f"is {len(value):,} characters long; at most {MAX_NAME:,} are allowed")
        return value

    def optional_string(self, key: str, value: Any) -> str | None:
        return None if value is None else self.string(key, value)

    # -- containers -------------------------------------------------------------------------
    def strings(self, key: str, value: Any, *, max_items: int = MAX_VALUES,
                nonempty: bool = False, min_items: int = 0, unique: bool = True) -> list[str]:
        if not isinstance(value, list):
            self.fail(key, f"must be a list of names, got {_kind(value)}")
        if not min_items <= len(value) <= max_items:
            self.fail(key, f"must hold {min_items:,} to {max_items:,} names, holds "
                      f"{len(value):,}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", f"must be text, got {_kind(item)}")
            if nonempty and not item.strip():
                self.fail(f"{key}[{i}]", "must not be empty")
            if len(item) > MAX_NAME:
                self.fail(f"{key}[{i}]", f"is {len(item):,} characters long; at most "
                          f"{MAX_NAME:,} are allowed")
        if unique and len(set(value)) != len(value):
            seen: set[str] = set()
            dup = next(x for x in value if x in seen or seen.add(x))
            self.fail(key, f"lists {dup!r} more than once")
        return value

    def mapping(self, key: str, value: Any, allowed: set[str] | None = None,
                required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a JSON object, got {_kind(value)}")
        if allowed is not None:
            unknown = sorted(k for k in value if k not in allowed)
            if unknown:
                self.fail(key, f"has an unknown entry {unknown[0]!r}; known entries are: "
                          f"{', '.join(sorted(allowed))}")
        missing = [k for k in required if k not in value]
        if missing:
            self.fail(key, f"lacks the entries: {', '.join(missing)}")
        return value

    def nesting(self, config: dict) -> None:
        stack = [(config, 1)]
        while stack:
            obj, depth = stack.pop()
            if depth > MAX_NESTING:
                self.fail("the config", f"is nested more than {MAX_NESTING} levels deep")
            children = obj.values() if isinstance(obj, dict) else obj
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))

    # -- sections ---------------------------------------------------------------------------
    def pathway_tokens(self, value: Any, kw: dict) -> None:
        """The gene sets of a pathway-token model (engine.nn.pathways): one per token."""
        if value is _MISSING:
            self.fail("pathway_tokens", "is missing: a model with pathway tokens records its "
                      "gene sets there")
        value = self.mapping("pathway_tokens", value, None, ("sets",))
        sets = value["sets"]
        if not isinstance(sets, list):
            self.fail("pathway_tokens.sets", f"must be a list, got {_kind(sets)}")
        for i, item in enumerate(sets):
            item = self.mapping(f"pathway_tokens.sets[{i}]", item, None, ("name", "collection"))
            self.string(f"pathway_tokens.sets[{i}].name", item["name"], nonempty=True)
            self.string(f"pathway_tokens.sets[{i}].collection", item["collection"])
        if "tokens" not in kw or len(sets) != kw["tokens"]:
            self.fail("pathway_tokens.sets", f"lists {len(sets)} gene sets, but the backbone "
                      f"has {kw.get('tokens')} pathway tokens (architecture.backbone_kw.tokens)")

    def architecture(self, arch: Any, defaults: dict) -> dict:
        arch = self.mapping("architecture", arch, ARCH_KEYS,
                            ("latent_dim", "ae_hidden", "cond_dim", "backbone"))
        for key, (low, high) in ARCH_INTS.items():
            self.integer(f"architecture.{key}", arch[key], low, high)
        backbone = arch["backbone"]
        if not isinstance(backbone, str) or backbone not in BACKBONE_KW:
            self.fail("architecture.backbone", f"must be one of {', '.join(BACKBONE_KW)}, got "
                      f"{_kind(backbone)}")
        objective = arch.get("objective", "rectified_flow")
        if not isinstance(objective, str) or objective not in OBJECTIVE_NAMES:
            self.fail("architecture.objective", f"must be one of {', '.join(OBJECTIVE_NAMES)}, "
                      f"got {_kind(objective)}")
        dispersion = arch.get("dispersion", "gene")
        if not isinstance(dispersion, str) or dispersion not in DISPERSION_NAMES:
            self.fail("architecture.dispersion", f"must be one of "
                      f"{', '.join(DISPERSION_NAMES)}, got {_kind(dispersion)}")
        prior = arch.get("target_prior", "none")
        if not isinstance(prior, str) or prior not in TARGET_PRIOR_NAMES:
            self.fail("architecture.target_prior", f"must be one of "
                      f"{', '.join(TARGET_PRIOR_NAMES)}, got {_kind(prior)}")
        if prior != "none" or "prior_dim" in arch:
            self.integer("architecture.prior_dim", arch.get("prior_dim"),
                         1 if prior != "none" else 0, 1_024)
        spec = BACKBONE_SPECS[backbone]
        kw = self.mapping("architecture.backbone_kw", arch.get("backbone_kw", {}),
                          set(spec.options))
        for key, value in kw.items():
            opt = spec.options[key]
            name = f"architecture.backbone_kw.{key}"
            if opt.kind == "int":
                self.integer(name, value, int(opt.low), int(opt.high))
            else:
                self.number(name, value, opt.low, opt.high)
        problem = spec.check({**defaults[backbone], **kw})
        if problem:
            self.fail("architecture.backbone_kw", problem)
        return arch

    def vocab(self, vocab: Any) -> dict:
        vocab = self.mapping("vocab", vocab, VOCAB_KEYS)
        levels = self.strings("vocab.levels", vocab.get("levels", []), max_items=MAX_LEVELS,
                              nonempty=True)
        values = self.mapping("vocab.level_values", vocab.get("level_values", {}))
        for lv in levels:
            if lv not in values:
                self.fail("vocab.level_values", f"has no values for the level {lv!r} listed in "
                          "vocab.levels")
        for lv, vals in values.items():
            if lv not in levels:
                self.fail("vocab.level_values", f"has values for {lv!r}, which is not in "
                          f"vocab.levels ({', '.join(levels) or 'none'})")
            self.strings(f"vocab.level_values.{lv}", vals)
        self.strings("vocab.targets", vocab.get("targets", []), nonempty=True)
        self.strings("vocab.types", vocab.get("types", []), nonempty=True)
        if "max_perturbations" in vocab:
            self.integer("vocab.max_perturbations", vocab["max_perturbations"], 1,
                         MAX_PERTURBATIONS)
        if "dose_scale" in vocab:
            self.number("vocab.dose_scale", vocab["dose_scale"], 0.0, 1e6, low_open=True)
        return vocab

    def space(self, space: Any, vocab: dict) -> None:
        space = self.mapping("space", space, SPACE_KEYS)
        cell_types = self.strings("space.cell_types", space.get("cell_types", []))
        targets = self.strings("space.targets", space.get("targets", []), nonempty=True)
        self.strings("space.perturbation_types", space.get("perturbation_types", []))
        tt = self.mapping("space.target_types", space.get("target_types", {}))
        for t, types in tt.items():
            self.strings(f"space.target_types.{t}", types)
        levels = self.strings("space.context_levels", space.get("context_levels", []),
                              max_items=MAX_LEVELS, nonempty=True)
        cv = self.mapping("space.context_values", space.get("context_values", {}))
        for lv, vals in cv.items():
            self.strings(f"space.context_values.{lv}", vals)
        for key in ("has_dose", "simulated_dose"):
            if key in space:
                self.boolean(f"space.{key}", space[key])
        dr = space.get("dose_range")
        if dr is not None:
            if not isinstance(dr, list) or len(dr) != 2:
                self.fail("space.dose_range", f"must be null or [low, high], got {_kind(dr)}")
            lo = self.number("space.dose_range[0]", dr[0], 0.0, 1e12)
            hi = self.number("space.dose_range[1]", dr[1], 0.0, 1e12)
            if lo > hi:
                self.fail("space.dose_range", f"low {lo:g} is above high {hi:g}")
        max_p = space.get("max_perturbations", 1)
        self.integer("space.max_perturbations", max_p, 0, MAX_PERTURBATIONS)
        if "control_label" in space:
            self.string("space.control_label", space["control_label"])
        seen = space.get("seen", [])
        if not isinstance(seen, list) or len(seen) > MAX_SEEN:
            self.fail("space.seen", f"must be a list of at most {MAX_SEEN:,} conditions, got "
                      f"{_kind(seen)}")
        for i, cond in enumerate(seen):
            self.condition(f"space.seen[{i}]", cond)
        # what the space accepts must be what the vocabulary can encode
        known = set(vocab.get("targets", []))
        for t in targets:
            if t not in known:
                self.fail("space.targets", f"lists {t!r}, which the model's vocab.targets lacks")
        for t in tt:
            if t not in targets:
                self.fail("space.target_types", f"names {t!r}, which is not in space.targets")
        vocab_levels = vocab.get("levels", [])
        for lv in levels:
            if lv not in cv:
                self.fail("space.context_values", f"has no values for the context level {lv!r}")
            if lv not in vocab_levels:
                self.fail("space.context_levels", f"names {lv!r}, which is not in vocab.levels")
        if "cell_type" in vocab_levels:
            vocab_ct = set(vocab["level_values"]["cell_type"])
            for ct in cell_types:
                if ct not in vocab_ct:
                    self.fail("space.cell_types", f"lists {ct!r}, which the model's "
                              "vocab.level_values.cell_type lacks")
        elif cell_types:
            self.fail("space.cell_types", "lists cell types but the vocab has no cell_type level")
        if max_p > vocab.get("max_perturbations", 1):
            self.fail("space.max_perturbations", f"is {max_p}, more than the "
                      f"{vocab.get('max_perturbations', 1)} the vocab encodes")

    def condition(self, key: str, cond: Any) -> None:
        cond = self.mapping(key, cond, {"cell_type", "perturbations", "context"})
        self.optional_string(f"{key}.cell_type", cond.get("cell_type"))
        perts = cond.get("perturbations", [])
        if not isinstance(perts, list) or len(perts) > MAX_PERTURBATIONS:
            self.fail(f"{key}.perturbations", f"must be a list of at most {MAX_PERTURBATIONS}, "
                      f"got {_kind(perts)}")
        for j, p in enumerate(perts):
            pk = f"{key}.perturbations[{j}]"
            p = self.mapping(pk, p, {"target", "type", "dose"}, ("target",))
            self.string(f"{pk}.target", p["target"], nonempty=True)
            self.optional_string(f"{pk}.type", p.get("type"))
            if p.get("dose") is not None:
                self.number(f"{pk}.dose", p["dose"], 0.0, 1e12)
        ctx = cond.get("context") or {}
        ctx = self.mapping(f"{key}.context", ctx)
        for lv, value in ctx.items():
            self.string(f"{key}.context.{lv}", value)

    def latent_stats(self, stats: Any, n: int) -> None:
        stats = self.mapping("latent_stats", stats, {"mean", "std"}, ("mean", "std"))
        for key, low in (("mean", -1e6), ("std", 1e-6)):
            values = stats[key]
            if not isinstance(values, list) or len(values) != n:
                self.fail(f"latent_stats.{key}", f"must be a list of {n} numbers (latent_dim + "
                          f"1), got {_kind(values)}")
            for i, x in enumerate(values):
                self.number(f"latent_stats.{key}[{i}]", x, low, 1e6)

    def sampling(self, sampling: Any) -> None:
        sampling = self.mapping("sampling", sampling, SAMPLING_KEYS)
        if "steps" in sampling:
            self.integer("sampling.steps", sampling["steps"], 1, MAX_STEPS)
        if "guidance" in sampling:
            self.number("sampling.guidance", sampling["guidance"], 0.0, MAX_GUIDANCE)
        if "batch_size" in sampling:
            self.integer("sampling.batch_size", sampling["batch_size"], 1, MAX_BATCH)
        if "guidance_by_evidence" in sampling:
            by = sampling["guidance_by_evidence"]
            if not isinstance(by, dict):
                self.fail("sampling.guidance_by_evidence", "must map evidence classes to "
                          f"guidance scales, got {_kind(by)}")
            for kind, g in by.items():
                if not isinstance(kind, str) or not kind.replace("_", "").isalnum():
                    self.fail("sampling.guidance_by_evidence", f"{kind!r} is not an evidence "
                              "class name")
                self.number(f"sampling.guidance_by_evidence.{kind}", g, 0.0, MAX_GUIDANCE)
        if "anchor" in sampling:
            a = self.mapping("sampling.anchor", sampling["anchor"], ANCHOR_KEYS)
            kinds = a.get("kinds", ["new_cell_type"])
            if not isinstance(kinds, list) or any(k not in ANCHOR_KINDS for k in kinds):
                self.fail("sampling.anchor.kinds", "must be a list of the evidence classes "
                          f"an anchor serves ({', '.join(ANCHOR_KINDS)})")
            if "refine" in a:
                self.number("sampling.anchor.refine", a["refine"], 0.0, 1.0)
            if "guidance" in a:
                self.number("sampling.anchor.guidance", a["guidance"], 0.0, MAX_GUIDANCE)
            if "weights" in a and a["weights"] not in WEIGHTS:
                self.fail("sampling.anchor.weights", f"must be one of {', '.join(WEIGHTS)}")
            if "tau" in a:
                self.number("sampling.anchor.tau", a["tau"], 0.0, 100.0, low_open=True)
            if "match" in a and a["match"] not in MATCHES:
                self.fail("sampling.anchor.match", f"must be one of {', '.join(MATCHES)}")
            if "gain" in a:
                self.number("sampling.anchor.gain", a["gain"], 0.0, 10.0, low_open=True)
            if "magnitude" in a and a["magnitude"] not in MAGNITUDES:
                self.fail("sampling.anchor.magnitude",
                          f"must be one of {', '.join(MAGNITUDES)}")
            if "source" in a:
                self.string("sampling.anchor.source", a["source"])

    def latent_means(self, lm: Any, width: int) -> None:
        """``latent_means``: each training group's condition, mean latent state (``width`` =
        latent_dim + 1 numbers) and cell count (engine.anchor)."""
        lm = self.mapping("latent_means", lm, LATENT_MEANS_KEYS)
        conds, means, counts = lm.get("conditions"), lm.get("mean"), lm.get("n_cells")
        if not isinstance(conds, list) or not all(isinstance(c, dict) for c in conds):
            self.fail("latent_means.conditions", "must be a list of conditions")
        for i, c in enumerate(conds):
            self.condition(f"latent_means.conditions[{i}]", c)
        if not isinstance(means, list) or len(means) != len(conds):
            self.fail("latent_means.mean", f"must be a list of {len(conds)} rows")
        if not isinstance(counts, list) or len(counts) != len(conds):
            self.fail("latent_means.n_cells", f"must be a list of {len(conds)} counts")
        for i, row in enumerate(means):
            if not isinstance(row, list) or len(row) != width:
                self.fail(f"latent_means.mean[{i}]", f"must be a list of {width} numbers")
            for x in row:
                self.number(f"latent_means.mean[{i}]", x, -1e6, 1e6)
        for i, n in enumerate(counts):
            self.integer(f"latent_means.n_cells[{i}]", n, 0, 10**10)

    def target_priors(self, tp: Any, arch: dict, vocab: dict) -> None:
        """``target_priors``: which prior resource the model's ``prior_table`` came from, and
        the priors' symbol of each trained target (null: no prior)."""
        if arch.get("target_prior", "none") == "none":
            if tp is not None:
                self.fail("target_priors", "is given but architecture.target_prior is none")
            return
        tp = self.mapping("target_priors", tp, TARGET_PRIORS_KEYS,
                          ("resource", "dims", "symbols"))
        self.string("target_priors.resource", tp["resource"], nonempty=True)
        self.integer("target_priors.dims", tp["dims"], int(arch["prior_dim"]),
                     int(arch["prior_dim"]))
        symbols = tp["symbols"]
        n = len(vocab.get("targets", []))
        if not isinstance(symbols, list) or len(symbols) != n:
            self.fail("target_priors.symbols", f"must be a list of {n} symbols or nulls (one per "
                      f"entry of vocab.targets), got {_kind(symbols)}")
        for i, sym in enumerate(symbols):
            self.optional_string(f"target_priors.symbols[{i}]", sym)

    def ensemble(self, ens: Any) -> None:
        ens = self.mapping("ensemble", ens, ENSEMBLE_KEYS, ("members",))
        k = self.integer("ensemble.members", ens["members"], 1, MAX_MEMBERS)
        if "seeds" in ens:
            seeds = ens["seeds"]
            if not isinstance(seeds, list) or len(seeds) != k:
                self.fail("ensemble.seeds", f"must be a list of {k} whole numbers (one per "
                          f"member), got {_kind(seeds)}")
            for i, x in enumerate(seeds):
                self.integer(f"ensemble.seeds[{i}]", x, 0, 2**63 - 1)
        if "bootstrap" in ens:
            self.boolean("ensemble.bootstrap", ens["bootstrap"])
        if "shared" in ens:
            self.string("ensemble.shared", ens["shared"])
        if "calibration_note" in ens:
            self.string("ensemble.calibration_note", ens["calibration_note"])
        cal = self.mapping("ensemble.calibration", ens.get("calibration", {}),
                           set(EVIDENCE_KINDS) | {"default"})
        for kind, x in cal.items():
            self.number(f"ensemble.calibration.{kind}", x, 0.0, 1e3, low_open=True)

    def schema(self, schema: Any) -> None:
        schema = self.mapping("schema", schema)          # unknown keys: ignored by Schema
        for key in ("cell_type_key", "perturbation_key", "perturbation_type_key", "dose_key",
                    "control_label"):
            self.optional_string(f"schema.{key}", schema.get(key))
        for key in ("context_keys", "drop_labels"):
            if schema.get(key) is not None:
                self.strings(f"schema.{key}", schema[key], unique=False)


# -- typed configuration ------------------------------------------------------------------------
# One source of truth for every default: the fields below. ArchConfig's fields are the module
# constructors' arguments (engine.models.autoencoder.NBAutoencoder, engine.models.flow
# .LatentFlowNet); TrainConfig's are read by the phases of engine.train; SamplingConfig's by
# engine.model. config.json (v2) stores them as ``architecture``, ``training.hyperparameters``
# and ``sampling``.
@dataclass
class ArchConfig:
    latent_dim: int = 32
    ae_hidden: int = 128
    cond_dim: int = 128
    backbone: str = "mlp"
    backbone_kw: dict = field(default_factory=dict)    # completed from BACKBONE_DEFAULTS
    objective: str = "rectified_flow"
    dispersion: str = "gene"
    # "gene_sets": the perturbation-target embedder adds a projection of each target's gene-set
    # prior row (engine.priors) to its learned embedding; "none": learned embeddings only (every
    # model before issue 13; the keys are then left out of config.json)
    target_prior: str = "none"
    prior_dim: int = 0

    def __post_init__(self) -> None:
        if self.target_prior not in TARGET_PRIOR_NAMES:
            raise ValueError(f"target_prior must be one of {', '.join(TARGET_PRIOR_NAMES)}, "
                             f"got {self.target_prior!r}")
        if self.target_prior == "none":
            self.prior_dim = 0
        elif int(self.prior_dim) < 1:
            raise ValueError("prior_dim must be at least 1 with target priors")
        if self.backbone not in BACKBONE_KW:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONE_KW)}, got "
                             f"{self.backbone!r}")
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, got "
                             f"{self.objective!r}")
        if self.dispersion not in DISPERSION_NAMES:
            raise ValueError(f"dispersion must be one of {', '.join(DISPERSION_NAMES)}, got "
                             f"{self.dispersion!r}")
        extra = sorted(set(self.backbone_kw) - set(BACKBONE_KW[self.backbone]))
        if extra:
            raise TypeError(f"the {self.backbone} backbone has no option {extra[0]!r}; its "
                            f"options are: {', '.join(BACKBONE_KW[self.backbone])}")
        self.backbone_kw = {**BACKBONE_DEFAULTS[self.backbone], **self.backbone_kw}
        problem = BACKBONE_SPECS[self.backbone].check(self.backbone_kw)
        if problem:                     # e.g. heads that do not divide the width
            raise ValueError(f"the {self.backbone} backbone: {problem}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.target_prior == "none":          # as every config before target priors
            del d["target_prior"], d["prior_dim"]
        return d


@dataclass
class TrainConfig:
    max_genes: int = 5000
    ae_epochs: int | None = None
    # at 600 steps the autoencoder was the main source of infidelity; 10,000 steps (~40 s of CPU
    # on 11k cells) raised the CRISPR model's held-out Pearson delta over clear effects from
    # 0.752 to 0.834 (build_scripts/ablation.py, docs/results/ablation_crispr.txt)
    ae_max_steps: int = 10000
    ae_max_epochs: int = 600
    ae_lr: float = 1e-3
    kl_weight: float = 0.5
    batch_size: int = 256
    flow_steps: int = 3000
    flow_batch: int = 256
    flow_lr: float = 1e-3
    p_uncond: float = 0.1
    p_coarse: float = 0.1
    ema: float = 0.998
    latent_sampling: bool = True
    # an ensemble of flow networks sharing the autoencoder, each on its own seed and its own
    # bootstrap of the cells of every condition: the spread of their predictions is the
    # model's uncertainty (engine.effects). 1 = a single network, trained on the cells as they
    # are (the format-2 model).
    members: int = 5
    bootstrap: bool = True
    # the budget (engine.train.training_budget): ``ae_steps`` fixes the autoencoder's steps
    # (else ``ae_epochs`` epochs, else the rule from ae_max_steps / ae_max_epochs); with
    # ``scale_budget`` the defaults follow the data size above SCALE_FROM_CELLS cells (flow
    # steps grow with the square root of the cells, autoencoder steps are capped).
    ae_steps: int | None = None
    scale_budget: bool = True
    # with target priors: the probability that a trained target's learned embedding is dropped
    # in a training example (its vector is then the prior path alone, as for a gene never
    # perturbed), so the prior path learns to carry the effect
    target_dropout: float = 0.25

    def __post_init__(self) -> None:
        if int(self.flow_steps) < 1 or int(self.ae_max_steps) < 1:
            raise ValueError("ae_max_steps and flow_steps must be at least 1")
        if self.ae_steps is not None and (isinstance(self.ae_steps, bool)
                                          or int(self.ae_steps) < 1):
            raise ValueError("ae_steps must be at least 1")
        if self.ae_epochs is not None and (isinstance(self.ae_epochs, bool)
                                           or int(self.ae_epochs) < 0):
            raise ValueError("ae_epochs must be 0 (the default rule) or more")
        if isinstance(self.members, bool) or not 1 <= int(self.members) <= MAX_MEMBERS:
            raise ValueError(f"members must be a whole number from 1 to {MAX_MEMBERS}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SamplingConfig:
    """How cells are drawn. ``guidance_by_evidence``: a guidance scale per evidence class
    (``engine.effects.EVIDENCE_KINDS``: measured, new_cell_type, ...), chosen on held-out
    folds, used when the caller gives no guidance; classes it lacks use ``guidance``."""

    steps: int = 10
    guidance: float = 1.0
    batch_size: int = 2048
    guidance_by_evidence: dict[str, float] = field(default_factory=dict)
    #: ``engine.anchor.AnchorRule`` as a dict (validated with the config), or None: the flow
    #: alone for every condition
    anchor: dict | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if not out["guidance_by_evidence"]:          # earlier configs never had the key
            del out["guidance_by_evidence"]
        if out["anchor"] is None:
            del out["anchor"]
        return out


# train_model(**overrides) names that are not field names of the same spelling
_SAMPLING_OVERRIDES = {"steps": "steps", "guidance": "guidance"}
_BACKBONE_OVERRIDES = BACKBONE_OPTIONS            # every backbone's option names


@dataclass
class ModelConfig:
    """The typed hyper-parameters of one model: architecture, training, sampling."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def from_overrides(cls, backbone: str = "mlp", **overrides) -> ModelConfig:
        """The config ``train_model(..., backbone=..., **overrides)`` trains: the defaults of
        the fields, with the flat override names of ``train_model`` (``latent_dim``,
        ``flow_steps``, ``steps``, ``width``, ...). The option names of any backbone
        (``engine.nn.specs.BACKBONE_OPTIONS``: ``width``, ``depth``, ``tokens``, ``heads``,
        ``dropout``, ``d_state``, ...) go to the backbone (an option it lacks raises TypeError);
        unknown names raise TypeError."""
        arch_names = {f.name for f in fields(ArchConfig)} - {"backbone", "backbone_kw"}
        train_names = {f.name for f in fields(TrainConfig)}
        known = arch_names | train_names | set(_SAMPLING_OVERRIDES) | _BACKBONE_OVERRIDES
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown training options: {sorted(unknown)}")
        kw = {k: v for k, v in overrides.items() if k in _BACKBONE_OVERRIDES}
        if backbone in BACKBONE_KW:
            # width / depth given for the other backbone family: an option it lacks is an error
            missing = sorted(set(kw) - set(BACKBONE_KW[backbone]))
            if missing:
                raise TypeError(f"the {backbone} backbone has no option {missing[0]!r}; its "
                                f"options are: {', '.join(BACKBONE_KW[backbone])}")
        arch = ArchConfig(backbone=backbone, backbone_kw=kw,
                          **{k: v for k, v in overrides.items() if k in arch_names})
        train = TrainConfig(**{k: v for k, v in overrides.items() if k in train_names})
        sampling = SamplingConfig(**{_SAMPLING_OVERRIDES[k]: v for k, v in overrides.items()
                                     if k in _SAMPLING_OVERRIDES})
        return cls(arch, train, sampling)

    def hyperparameters(self) -> dict:
        """The flat record written to ``training.hyperparameters`` (the override names)."""
        return {**self.train.to_dict(), **{k: v for k, v in self.arch.to_dict().items()
                                           if k not in ("backbone", "backbone_kw")},
                **self.arch.backbone_kw, "steps": self.sampling.steps,
                "guidance": self.sampling.guidance}

    def to_dict(self) -> dict:
        """The config.json sections this class owns (v2 layout)."""
        return {"architecture": self.arch.to_dict(), "sampling": self.sampling.to_dict(),
                "training": {"hyperparameters": self.hyperparameters()}}

    @classmethod
    def from_dict(cls, config: Mapping) -> ModelConfig:
        """Read a parsed ``config.json`` (v1 configs are upgraded first, :func:`upgrade_v1`).
        Training options absent from the record (models trained elsewhere) take defaults."""
        if config.get("format_version") == 1:
            config = upgrade_v1(config)
        arch = ArchConfig(**dict(config["architecture"]))
        hp = (config.get("training") or {}).get("hyperparameters") or {}
        train_names = {f.name for f in fields(TrainConfig)}
        train = TrainConfig(**{k: v for k, v in hp.items() if k in train_names})
        return cls(arch, train, SamplingConfig(**dict(config.get("sampling") or {})))


def upgrade_v1(config: Mapping) -> dict:
    """A v1 ``config.json`` (validated) as the v2 layout, meaning the same model.

    v1 left entries out where its code had a fallback; v2 writes every entry. Filled in with the
    v1 fallbacks: ``architecture.objective`` ("rectified_flow"), ``architecture.dispersion``
    ("gene"), absent ``architecture.backbone_kw`` entries (:data:`V1_BACKBONE_DEFAULTS`: the v1
    MLP module was 256 wide), ``sampling.steps`` (:data:`V1_SAMPLING_STEPS`), ``guidance`` 1.0
    and ``batch_size`` 2048. Everything else is kept as it is. A config that is not v1 is
    returned unchanged (a copy)."""
    out = copy.deepcopy(dict(config))
    if out.get("format_version") != 1:
        return out
    arch = dict(out["architecture"])
    backbone = arch["backbone"]
    arch.setdefault("objective", "rectified_flow")
    arch.setdefault("dispersion", "gene")
    arch["backbone_kw"] = {**V1_BACKBONE_DEFAULTS[backbone], **arch.get("backbone_kw", {})}
    out["architecture"] = arch
    out["sampling"] = {"steps": V1_SAMPLING_STEPS, "guidance": 1.0, "batch_size": 2048,
                       **(out.get("sampling") or {})}
    out["format_version"] = 2
    out["upgraded_from"] = 1
    return out
