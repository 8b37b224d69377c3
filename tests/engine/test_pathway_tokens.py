"""Pathway tokens (issue 13 #2, engine.nn.pathways): the set selection, the score map fitted on
a tiny autoencoder, shapes, identity at start, save/load, the per-token changes, and the one
backbone registry (a backbone appears in the CLI and on the Train page from its entry alone)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import BACKBONE_NAMES, Condition, PerturbModel, train_model
from engine.errors import DataError
from engine.genesets import GeneSet
from engine.nn.pathways import PathwayTokenBackbone, select_sets

from .conftest import TINY

torch.set_num_threads(1)

# gene sets over the synthetic data's genes G0..G59 (tests/engine/conftest.make_synthetic):
# G10-G19 go up under A, G20-G29 under B, G0-G9 are cell-type markers
GMT = ("A_UP\tgenes A raises\t" + "\t".join(f"G{i}" for i in range(10, 20)) + "\n"
       "B_UP\tgenes B raises\t" + "\t".join(f"G{i}" for i in range(20, 30)) + "\n"
       "MARKERS\tcell-type markers\t" + "\t".join(f"G{i}" for i in range(0, 10)) + "\tNOTME\n"
       "A_OVERLAP\tmostly A\t" + "\t".join(f"G{i}" for i in range(12, 20)) + "\tG40\n"
       "TOO_SMALL\tthree genes\tG50\tG51\tG52\n")


@pytest.fixture()
def gmt_dir(tmp_path, monkeypatch):
    d = tmp_path / "genesets"
    d.mkdir()
    (d / "hallmark_v7.5.1.gmt").write_text(GMT)
    monkeypatch.setenv("PERTURB_STUDIO_GENESETS_DIR", str(d))
    return d


def _sets(spec: dict[str, list[str]], collection: str = "Hallmark") -> list[GeneSet]:
    return [GeneSet(k, collection, tuple(v)) for k, v in spec.items()]


def test_set_selection_is_greedy_coverage_and_deterministic():
    genes = [f"g{i}" for i in range(40)]
    sets = _sets({"big": genes[:20], "overlap": genes[2:18] + ["x"], "other": genes[20:30],
                  "tiny": genes[30:33], "half": genes[28:36], "outside": ["y", "z"] * 10})
    chosen = select_sets(genes, sets, tokens=10, min_genes=5)
    # big first (20 new), then other (10 new), then half (6 new: g30..g35); overlap adds 0
    assert [c.name for c in chosen] == ["big", "other", "half"]
    assert chosen[2].genes == tuple(genes[28:36])           # in model order, only model genes
    assert select_sets(genes, list(reversed(sets)), tokens=10, min_genes=5) == chosen
    assert [c.name for c in select_sets(genes, sets, tokens=2, min_genes=5)] == ["big", "other"]
    # ties (same new genes, same size) go by collection then name
    tie = _sets({"b": genes[:6], "a": genes[6:12]})
    assert [c.name for c in select_sets(genes, tie, tokens=1, min_genes=5)] == ["a"]
    assert select_sets(genes, sets, tokens=10, min_genes=50) == []


def test_shapes_and_identity_at_start():
    torch.manual_seed(0)
    net = PathwayTokenBackbone(9, 16, width=8, depth=2, tokens=5, heads=2)
    x, cond = torch.randn(4, 9), torch.randn(4, 16)
    assert net.tokens == 6 and net.tokenize(x).shape == (4, 6, 8)
    assert net.scores(x).shape == (4, 5)
    h = torch.randn(4, 6, 8)
    for block in net.blocks:
        assert torch.equal(block(h, cond), h)                 # AdaLN-Zero: the identity
    assert torch.equal(net(x, cond), net.out.bias.expand(4, -1))
    # the buffers travel with the weights, and are not trained
    names = set(net.state_dict())
    assert {"pathway_map", "pathway_bias", "pathway_center", "pathway_scale"} <= names
    assert not any(n.startswith("pathway_") for n, _ in net.named_parameters())


@pytest.mark.parametrize("kw", [{}, {"width": 12, "depth": 2, "tokens": 5, "heads": 3,
                                     "min_genes": 2},
                                {"width": 4, "depth": 0, "tokens": 1, "heads": 1}])
def test_parameter_count_is_exact(kw):
    """The registry's count (engine.config's budget, before anything is built) is the number
    of values in the state dict, the score map's buffers included."""
    from engine.nn.specs import BACKBONE_SPECS

    spec = BACKBONE_SPECS["pathway-transformer"]
    full = {**spec.defaults(), **kw}
    net = PathwayTokenBackbone(9, 16, **full)
    assert spec.parameters(9, 16, full) == sum(t.numel() for t in net.state_dict().values())


def test_tokens_follow_the_scores():
    """With a score map in place, a pathway token changes with its own score only."""
    torch.manual_seed(0)
    net = PathwayTokenBackbone(4, 8, width=6, depth=1, tokens=2, heads=2)
    with torch.no_grad():
        net.pathway_map.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.zeros(1, 4)
    x2 = x.clone()
    x2[0, 0] = 1.0                                          # moves score 0 only
    d = (net.tokenize(x2) - net.tokenize(x))[0]             # (3, W)
    torch.testing.assert_close(d[0], net.score_vec[0].detach())
    assert d[1].abs().max() == 0 and d[2].abs().max() > 0   # the whole-state token moves too


def test_registry_alone_puts_a_backbone_in_the_cli_and_the_train_page(monkeypatch):
    from engine import cli
    from engine.config import BACKBONE_DEFAULTS, ModelConfig
    from engine.nn.specs import BACKBONE_SPECS, BackboneSpec

    assert "pathway-transformer" in BACKBONE_NAMES
    assert cli.BACKBONE("pathway-transformer") == "pathway-transformer"
    assert BACKBONE_DEFAULTS["pathway-transformer"]["tokens"] == 24
    mc = ModelConfig.from_overrides("pathway-transformer", tokens=7, min_genes=3)
    assert mc.arch.backbone_kw["tokens"] == 7 and mc.arch.backbone_kw["min_genes"] == 3
    # a new entry in the registry (and nothing else) is offered by the CLI and the Train page
    spec = BackboneSpec("toy-net", "engine.nn.blocks:MLPBackbone", "a toy",
                        dict(BACKBONE_SPECS["mlp"].options), BACKBONE_SPECS["mlp"].parameters)
    monkeypatch.setitem(BACKBONE_SPECS, "toy-net", spec)
    import engine
    import engine.config
    import engine.nn.blocks
    import engine.nn.specs

    # the names derived from the registry at import time, recomputed as a fresh start would
    names = tuple(BACKBONE_SPECS)
    for mod in (engine.nn.specs, engine.config, engine):
        monkeypatch.setattr(mod, "BACKBONE_NAMES", names, raising=False)
    monkeypatch.delattr(engine.nn.blocks, "BACKBONES", raising=False)   # read on first use
    assert "toy-net" in cli.BACKBONE.names()
    assert engine.nn.blocks.BACKBONES["toy-net"].__name__ == "MLPBackbone"
    from PySide6.QtWidgets import QApplication

    from app.panels.train import TrainPanel

    _qt = QApplication.instance() or QApplication([])
    panel = TrainPanel()
    items = [panel.backbone.itemData(i) for i in range(panel.backbone.count())]
    assert items[-2:] == ["pathway-transformer", "toy-net"]
    panel.deleteLater()


def test_no_qualifying_set_is_refused_with_the_reason(synthetic, schema, gmt_dir):
    (gmt_dir / "hallmark_v7.5.1.gmt").write_text("X\td\tNOPE1\tNOPE2\n")
    with pytest.raises(DataError, match=r"no Hallmark or Reactome set has 4 or more of the "
                                        r"model's 60 genes"):
        train_model(synthetic, schema, None, seed=0, device="cpu",
                    backbone="pathway-transformer", min_genes=4,
                    **{**TINY, "ae_max_steps": 20, "flow_steps": 5})


def test_tiny_pathway_model_trains_saves_loads_and_scores(synthetic, schema, gmt_dir, tmp_path):
    tiny = {**TINY, "ae_max_steps": 150, "flow_steps": 300, "width": 16, "depth": 2,
            "members": 2}
    out = tmp_path / "pw"
    m = train_model(synthetic.copy(), schema, out, seed=0, device="cpu",
                    backbone="pathway-transformer", tokens=6, min_genes=5, heads=2, **tiny)
    pw = m.config["pathway_tokens"]
    # A_UP (10), B_UP (10), MARKERS (10) each add 10 new genes; A_OVERLAP adds only G40
    assert [s["name"] for s in pw["sets"]] == ["A_UP", "B_UP", "MARKERS"]
    assert m.config["architecture"]["backbone_kw"]["tokens"] == 3       # fewer than asked
    assert pw["asked"] == 6 and pw["sets"][2]["model_genes"] == 10
    assert pw["sets"][2]["set_genes"] == 11
    assert all(0.0 <= s["fit_r2"] <= 1.0 for s in pw["sets"])
    bb = m.net.backbone
    assert isinstance(bb, PathwayTokenBackbone) and bb.pathway_map.shape == (3, 9)
    assert bb.pathway_map.abs().sum() > 0
    # every member got the same map
    torch.testing.assert_close(m.nets[1].backbone.pathway_map, bb.pathway_map)
    # the map reads the decoder: a posterior mean decoded directly vs the linear score
    assert min(s["fit_r2"] for s in pw["sets"]) > 0.5

    from engine.cards import render_markdown

    md = render_markdown(m.config, m.card)              # the card names the tokens' sets
    assert "Pathway tokens: 3 gene sets" in md and "Hallmark: MARKERS (10 genes)" in md

    loaded = PerturbModel.load(out, device="cpu")
    assert loaded.config["pathway_tokens"] == pw
    for key, t in m.net.state_dict().items():
        assert torch.equal(t, loaded.net.state_dict()[key]), key
    cond = Condition.parse("T", "A", "CRISPRa")
    a, b = m.generate(cond, 16, seed=1), loaded.generate(cond, 16, seed=1)
    np.testing.assert_array_equal(a.layers["counts"].toarray(), b.layers["counts"].toarray())

    from engine import pathway_token_changes

    ch = pathway_token_changes(loaded, cond, n=200, seed=0)
    assert ch.available and ch.names == ["A_UP", "B_UP", "MARKERS"]
    assert ch.per_member.shape == (2, 3)
    np.testing.assert_allclose(ch.change, ch.per_member.mean(0))
    again = pathway_token_changes(loaded, cond, n=200, seed=0)
    np.testing.assert_array_equal(again.per_member, ch.per_member)
    # the set A raises moves more than the others
    assert ch.ranked()[0][0] == "A_UP" and ch.change[0] > 0


def test_other_models_say_why_there_are_no_pathway_tokens(tiny_model):
    from engine import pathway_token_changes

    cond = Condition.parse("T", "A", "CRISPRa")
    ch = pathway_token_changes(tiny_model, cond, n=10)
    assert not ch.available and "mlp backbone" in ch.reason and "pathway-transformer" in ch.reason


def test_config_without_its_gene_sets_is_refused(synthetic, schema, gmt_dir, tmp_path):
    import json

    from engine.errors import ModelError

    out = tmp_path / "pw"
    train_model(synthetic, schema, out, seed=0, device="cpu", backbone="pathway-transformer",
                tokens=3, min_genes=5, heads=2,
                **{**TINY, "ae_max_steps": 20, "flow_steps": 5, "width": 8})
    path = out / "config.json"
    config = json.loads(path.read_text())
    for change, message in (
            (lambda c: c.pop("pathway_tokens"), r"pathway_tokens is missing"),
            (lambda c: c["pathway_tokens"]["sets"].pop(), r"lists 2 gene sets, but the backbone "
                                                         r"has 3 pathway tokens"),
            (lambda c: c["pathway_tokens"]["sets"][0].update(name=""), r"sets\[0\]\.name")):
        broken = json.loads(json.dumps(config))
        change(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(ModelError, match=message):
            PerturbModel.load(out, device="cpu")
