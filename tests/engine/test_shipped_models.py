"""Every shipped model loads, generates for every condition it lists, refuses what it never saw,
and its card agrees with its config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import Condition, ConditionError, PerturbModel, list_models, shipped_models_dir

EXPECTED = {"kang-ifnb-pbmc", "crispr-k562-glioblastoma", "papalexi-thp1-ko",
            "pbmc68k-celltypes"}
SHIPPED = sorted(p.name for p in shipped_models_dir().iterdir() if p.is_dir()) \
    if shipped_models_dir().is_dir() else []


def test_all_four_models_ship():
    assert EXPECTED <= set(SHIPPED)
    names = {m.name for m in list_models() if m.source == "shipped"}
    assert EXPECTED <= names


@pytest.mark.parametrize("name", SHIPPED)
def test_card_matches_config(name):
    folder = shipped_models_dir() / name
    config = json.loads((folder / "config.json").read_text())
    card = json.loads((folder / "card.json").read_text())
    assert card["genes"] == config["genes"]
    assert card["conditions"] == config["space"]
    assert (folder / "CARD.md").read_text().startswith(f"# {name}")
    assert card["metrics"], "card has no held-out metrics"
    assert card["citation"] and card["split"]
    # weights are small enough to commit: an autoencoder and 5 flow members (Kang: 21 MB)
    assert (folder / "model.safetensors").stat().st_size < 32 * 2**20
    # ensembles with their reference cells, calibrated on held-out cells (issue 10)
    config = json.loads((folder / "config.json").read_text())
    assert config["ensemble"]["members"] == 5
    assert 0 < (folder / "reference.safetensors").stat().st_size < 8 * 2**20
    if config["space"]["targets"]:
        assert config["ensemble"]["calibration"]["measured"] > 0
        cov = card["evidence"]["measured"]["coverage"]
        assert 0.8 <= cov["coverage_noise_aware"] <= 0.95
    assert card["plain"] and 3 <= len(card["plain"]) <= 5


@pytest.mark.parametrize("name", SHIPPED)
def test_generates_every_listed_condition(name):
    model = PerturbModel.load(name, device="cpu")
    seen = [Condition.from_dict(d) for d in model.space.seen]
    assert seen
    a = model.generate_many(seen, 4, include_control=False, seed=0, steps=4)
    assert a.n_obs == 4 * len(seen)
    assert np.isfinite(a.X.data).all() and a.layers["counts"].sum() > 0
    assert set(a.obs["condition"]) == {model.space.complete(c).label for c in seen}


@pytest.mark.parametrize("name", SHIPPED)
def test_refuses_unknown_perturbation_with_the_list(name):
    model = PerturbModel.load(name, device="cpu")
    ct = model.space.cell_types[0] if model.space.cell_types else None
    name = "NOTAGENE1" if model.accepts_new_genes else "TP53"   # TP53: a gene of the priors
    with pytest.raises(ConditionError) as err:
        model.generate(Condition.parse(ct, name, "CRISPRa"), 3)
    msg = str(err.value)
    if model.accepts_new_genes:
        assert "NOTAGENE1 is not in the gene-set priors" in msg and "never perturbed" in msg
        assert model.space.targets[0] in msg
    elif model.space.targets:
        assert "TP53 was never perturbed" in msg and model.space.targets[0] in msg
    else:
        assert "without perturbations" in msg


def test_crispr_model_knows_types_and_contexts():
    if "crispr-k562-glioblastoma" not in SHIPPED:
        pytest.skip("model not built")
    sp = PerturbModel.load("crispr-k562-glioblastoma").space
    assert set(sp.perturbation_types) == {"CRISPRa", "CRISPRi"}
    assert sp.context_levels == ["tissue"]
    assert sp.max_perturbations == 2
    ab = Condition.parse("k562", "KLF1+TGFBR2", "CRISPRa")
    ba = Condition.parse("k562", "TGFBR2+KLF1", "CRISPRa")
    assert sp.complete(ab) == sp.complete(ba) and sp.is_seen(ba)
    with pytest.raises(ConditionError, match="only seen in tissue"):
        sp.validate(Condition.parse("k562", "KLF1", "CRISPRa", context="tissue=brain"))


def test_papalexi_model_accepts_a_gene_never_perturbed():
    if "papalexi-thp1-ko" not in SHIPPED:
        pytest.skip("model not built")
    model = PerturbModel.load("papalexi-thp1-ko", device="cpu")
    assert model.accepts_new_genes
    cond = model.check_condition(Condition.parse("THP-1", "TP53"))
    assert cond.perturbations[0].type == "knockout"
    ev = model.evidence(cond)
    assert ev.kind == "new_gene" and ev.score is not None and ev.below_baseline
    assert model.check_condition(Condition.parse("THP-1", "MARCHF8")).perturbations[0].target \
        == "MARCH8"                                   # the symbol finds the trained target
