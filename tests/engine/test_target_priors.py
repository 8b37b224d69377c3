"""Gene-set target priors: the embedder for targets never perturbed in training, the model
config that stores the prior rows, validation (accepted / refused with the reason), the
evidence class, the CLI, and that models without priors are unchanged."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch

from engine.conditions.embedders import PerturbationEmbedder
from engine.errors import ConditionError

from .conftest import TINY, make_synthetic

NAMES = {"A": "STAT1", "B": "IRF1"}          # the synthetic targets, renamed to real genes


def _gene_data():
    a = make_synthetic()
    lab = a.obs["perturbation"].astype(str)
    for old, new in NAMES.items():
        lab = lab.str.replace(old, new)
    a.obs["perturbation"] = lab.astype("category")
    return a


@pytest.fixture(scope="module")
def prior_model(schema):
    from engine import train_model

    return train_model(_gene_data(), schema, None, seed=0, device="cpu", **TINY)


@pytest.fixture(scope="module")
def prior_model_dir(prior_model, tmp_path_factory):
    return prior_model.save(tmp_path_factory.mktemp("prior") / "prior-model")


# -- the embedder --------------------------------------------------------------------------------
def _embedder(prior_dim=4):
    torch.manual_seed(0)
    e = PerturbationEmbedder(2, 1, 8, prior_dim).eval()
    e.prior_table.copy_(torch.tensor([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0.]]))
    return e


def test_unseen_target_uses_the_prior_path_alone():
    e = _embedder()
    e.set_new_targets(torch.tensor([[0, 0, 1, 0, 0.], [0, 0, 0, 1, 0.]]))
    idx = torch.tensor([[3], [4]])                       # the two new targets
    with torch.no_grad():
        vec = e.target_vector(idx)
        assert torch.allclose(vec[0, 0], e.prior(torch.tensor([0, 0, 1, 0, 0.])))
        assert not torch.allclose(vec[0, 0], vec[1, 0])  # another prior, another embedding
        # a trained target: learned + prior
        seen = e.target_vector(torch.tensor([[1]]))[0, 0]
        assert torch.allclose(seen, e.target.emb.weight[1] + e.prior(e.prior_table[1]))
        out = e(idx, torch.ones_like(idx), torch.zeros(2, 1))
    assert out.shape == (2, 1, 8) and not torch.allclose(out[0], out[1])


def test_learned_dropout_leaves_the_prior_path():
    e = _embedder()
    e.learned_dropout = 1.0
    e.train()
    with torch.no_grad():
        dropped = e.target_vector(torch.tensor([[1]]))[0, 0]
        assert torch.allclose(dropped, e.prior(e.prior_table[1]))
        e.eval()                                          # never at generation time
        assert not torch.allclose(e.target_vector(torch.tensor([[1]]))[0, 0], dropped)


def test_embedder_without_priors_is_unchanged():
    torch.manual_seed(0)
    e = PerturbationEmbedder(2, 1, 8)
    assert set(e.state_dict()) == {"target.emb.weight", "ptype.emb.weight", "dose.0.weight",
                                   "dose.0.bias", "dose.2.weight", "dose.2.bias",
                                   "combine.0.weight", "combine.0.bias", "combine.2.weight",
                                   "combine.2.bias"}
    idx = torch.tensor([[1, 2]])
    assert torch.equal(e.target_vector(idx), e.target(idx))
    with pytest.raises(ValueError, match="no target priors"):
        e.set_new_targets(torch.zeros(1, 5))


# -- the model -----------------------------------------------------------------------------------
def test_training_on_gene_targets_turns_the_priors_on(prior_model):
    from engine.config import parameter_count, validate_config
    from engine.priors import load_gene_priors

    cfg = prior_model.config
    assert cfg["architecture"]["target_prior"] == "gene_sets"
    assert cfg["architecture"]["prior_dim"] == load_gene_priors().dims
    tp = cfg["target_priors"]
    assert tp["symbols"] == ["IRF1", "STAT1"] and tp["sha256"] == load_gene_priors().fingerprint
    validate_config({k: v for k, v in cfg.items() if not k.startswith("_")}, where="x")
    # parameter_count counts the stored tensors: parameters and the prior_table buffer
    n = sum(t.numel() for t in prior_model.autoencoder.state_dict().values()) + \
        sum(t.numel() for t in prior_model.net.state_dict().values())
    assert parameter_count(cfg) == n
    table = prior_model.net.cond.perturbation.prior_table
    row = load_gene_priors().embedding("STAT1")
    assert torch.allclose(table[2, :-1], torch.as_tensor(row / np.linalg.norm(row)))
    assert float(table[:, -1].sum()) == 0.0               # both targets have a prior


def test_models_without_gene_targets_have_no_priors(tiny_model, schema):
    from engine import train_model

    assert "target_prior" not in tiny_model.config["architecture"]    # targets A, B
    assert "target_priors" not in tiny_model.config
    assert not tiny_model.accepts_new_genes and tiny_model.new_gene_candidates() == []
    off = train_model(_gene_data(), schema, None, seed=0, device="cpu", target_prior="none",
                      **TINY)
    assert "target_prior" not in off.config["architecture"]
    with pytest.raises(ConditionError, match="STAT2 was never perturbed"):
        off.check_condition(_cond("STAT2"))


def _cond(target, ct="T", ty=None):
    from engine import Condition

    return Condition.parse(ct, target, ty)


def test_never_perturbed_gene_accepted_with_its_evidence(prior_model):
    cond = prior_model.check_condition(_cond("STAT2"))
    assert cond.perturbations[0].type == "CRISPRa"        # the model's only type
    ev = prior_model.evidence(cond)
    assert ev.kind == "new_gene"
    assert ev.label == "never perturbed in training: predicted from gene-set priors"
    notes = prior_model.target_notes(_cond("STAT2"))
    assert any("never perturbed in training" in n for n in notes)
    a = prior_model.generate(cond, 30, seed=0)
    assert set(a.obs["perturbation"]) == {"STAT2"}
    prov = a.uns["perturb_studio"]
    assert prov["new_genes"] == ["STAT2"] and "gene-set priors" in prov["new_gene_evidence"]
    # another gene, another prediction (different prior rows)
    b = prior_model.generate(prior_model.check_condition(_cond("TP53")), 30, seed=0)
    assert (a.X != b.X).nnz > 0
    # the learned part of a trained target matters
    s1 = prior_model.generate(prior_model.check_condition(_cond("STAT1")), 30, seed=0)
    assert "new_genes" not in s1.uns["perturb_studio"]


def test_unknown_gene_refused_with_the_reason(prior_model):
    with pytest.raises(ConditionError) as e:
        prior_model.check_condition(_cond("NOTAGENE1"))
    from engine.priors import load_gene_priors

    msg = str(e.value)
    assert f"NOTAGENE1 is not in the gene-set priors ({len(load_gene_priors()):,} human " \
           "symbols" in msg
    assert "Hallmark, Reactome, GO, WikiPathways" in msg
    assert "never perturbed in this model's training data" in msg and "IRF1, STAT1" in msg


def test_aliases_and_ensembl_ids_map_to_symbols(prior_model):
    c = prior_model.check_condition(_cond("MARCH8"))
    assert c.perturbations[0].target == "MARCHF8"
    assert any("MARCH8 was read as MARCHF8" in n for n in prior_model.target_notes(_cond("MARCH8")))
    c = prior_model.check_condition(_cond("ENSG00000115415"))       # STAT1: a trained target
    assert c.perturbations[0].target == "STAT1"
    assert prior_model.evidence(c).kind == "measured"
    assert prior_model.check_condition(_cond("stat2")).perturbations[0].target == "STAT2"


def test_new_gene_baseline_is_the_average_trained_perturbation(prior_model):
    from engine.effects import baseline_for

    cond = prior_model.check_condition(_cond("STAT2"))
    base = baseline_for(prior_model, cond)
    stats = prior_model.group_stats()
    singles = [prior_model.check_condition(_cond(t)) for t in ("STAT1", "IRF1")]
    assert base.name == "average_perturbation"
    np.testing.assert_allclose(base.effect, np.mean([stats.effect(c) for c in singles], 0))


def test_save_load_round_trip_with_priors(prior_model, prior_model_dir):
    from safetensors.numpy import load_file

    from engine import PerturbModel

    w = load_file(str(prior_model_dir / "model.safetensors"))
    assert "net.cond.perturbation.prior_table" in w
    assert not any("new_prior" in k for k in w)
    m = PerturbModel.load(prior_model_dir, device="cpu")
    for t in ("STAT1", "STAT2"):
        c = prior_model.check_condition(_cond(t))
        a, b = prior_model.generate(c, 20, seed=3), m.generate(c, 20, seed=3)
        assert (a.X != b.X).nnz == 0


def test_other_priors_build_refuses_new_genes_only(prior_model_dir, monkeypatch):
    from engine import PerturbModel

    m = PerturbModel.load(prior_model_dir, device="cpu")
    m.target_priors["sha256"] = "0" * 64
    with pytest.raises(ConditionError, match="another build"):
        m.check_condition(_cond("STAT2"))
    m.check_condition(_cond("STAT1"))                     # trained targets need no resource


def test_config_checks_the_prior_entries(prior_model):
    from engine.config import validate_config
    from engine.errors import ModelError

    cfg = json.loads(json.dumps({k: v for k, v in prior_model.config.items()
                                 if not k.startswith("_")}))
    bad = json.loads(json.dumps(cfg))
    bad["architecture"]["target_prior"] = "pathways"
    with pytest.raises(ModelError, match="target_prior"):
        validate_config(bad, where="c.json")
    bad = json.loads(json.dumps(cfg))
    bad["target_priors"]["symbols"] = ["IRF1"]
    with pytest.raises(ModelError, match="target_priors.symbols"):
        validate_config(bad, where="c.json")
    bad = json.loads(json.dumps(cfg))
    del bad["architecture"]["target_prior"], bad["architecture"]["prior_dim"]
    with pytest.raises(ModelError, match="target_priors"):
        validate_config(bad, where="c.json")


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_generates_a_never_perturbed_gene(prior_model_dir, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "stat2.h5ad"
    rc = main(["generate", "--model", str(prior_model_dir), "--cell-type", "T",
               "--perturbation", "STAT2", "-n", "20", "-o", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "STAT2: never perturbed in training: predicted from gene-set priors" in text
    assert "evidence: never perturbed in training" in text
    a = ad.read_h5ad(out)
    assert list(a.uns["perturb_studio"]["new_genes"]) == ["STAT2"]
    rc = main(["effects", "--model", str(prior_model_dir), "--cell-type", "T",
               "--perturbation", "STAT2", "-n", "40", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and d["evidence"]["kind"] == "new_gene"
    assert d["baseline"]["name"] == "average_perturbation"
    rc = main(["generate", "--model", str(prior_model_dir), "--cell-type", "T",
               "--perturbation", "NOTAGENE1", "-n", "5", "-o", str(tmp_path / "x.h5ad"),
               "--quiet"])
    assert rc == 2 and "not in the gene-set priors" in capsys.readouterr().err
