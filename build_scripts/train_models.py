"""Retrain every shipped model from ../shared/data and rewrite its card from measured results.

    python build_scripts/train_models.py [--only NAME ...] [--out resources/models]

Fixed seeds; CPU, 2 threads. Each model is trained on a stratified 80 % of its file's cells (by
condition group, seed 0) and evaluated on the other 20 % against the control / mean-shift /
additive baselines. The split, the DE counts and every score come from engine.evaluate
(split, clear_effects, evaluate_many); this script only picks the data and writes the cards. The
data folder comes from PERTURB_STUDIO_DATA (default
../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("PERTURB_STUDIO_DATA", ROOT / ".." / "shared" / "data"))
NO_DOSE = ("No real drug + dose dataset was available to us, so no shipped model conditions on "
           "dose; dose conditioning is exercised only by tests on simulated data with a known "
           "dose-response. Bring sci-Plex-style data and train your own model for drugs.")


def kang():
    import anndata as ad

    from engine import Schema

    a = ad.read_h5ad(DATA / "kang2018_ifnb_pbmc_train.h5ad")
    a.obs["organism"] = "human"
    a.obs["tissue"] = "blood"
    s = Schema(cell_type_key="cell_type", perturbation_key="condition",
               context_keys=("organism", "tissue"), control_label="control")
    card = {"summary": "PBMCs from lupus patients, control vs interferon-beta stimulation "
                       "(6 h), 7 cell types. Generates control or IFN-beta-stimulated cells of "
                       "each type.",
            "data": "kang2018_ifnb_pbmc_train.h5ad: 2421 cells x 4805 genes, raw UMI counts "
                    "(Kang et al. 2018, GEO GSE96583), cell-type labels mapped to the 7 scGen "
                    "names",
            "citation": "Kang et al., Nat Biotechnol 36, 89-94 (2018)",
            "limitations": ["One perturbation, named as in the data: 'stimulated' = 6 h of "
                            "interferon-beta (IFN-beta); 'control' = unstimulated.",
                            "Dendritic cells are few (42 in the file): their scores are noisy.",
                            NO_DOSE]}
    return a, s, card


#: Kang's seven cell types, in the order of the leave-one-cell-type-out scripts.
KANG_CELL_TYPES = ["B", "CD14+Mono", "CD4T", "CD8T", "Dendritic", "FCGR3A+Mono", "NK"]


def kang_fold_parser(doc: str, *, cell_types: bool = True) -> argparse.ArgumentParser:
    """The arguments every script over Kang's saved fold models takes: the folder of
    ``kang_loo.py --save-models``, ``--cell-types`` (unless ``cell_types=False``), ``--threads``."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folds", type=Path, help="the --save-models folder of kang_loo.py")
    if cell_types:
        p.add_argument("--cell-types", nargs="*", default=KANG_CELL_TYPES)
    p.add_argument("--threads", type=int, default=2)
    return p


def load_kang_fold(folds: Path, cell_type: str, adata=None, schema=None):
    """The fold model ``kang_loo.py --save-models`` kept for ``cell_type`` (trained without its
    stimulated cells). With ``adata`` / ``schema`` (Kang's cells), a model saved before the
    latent group means were stored gets them from its training cells (engine.anchor)."""
    from engine import PerturbModel

    model = PerturbModel.load(folds / cell_type.replace("+", "plus"), device="cpu")
    if adata is not None and not model.config.get("latent_means"):
        from engine.anchor import latent_means_from_cells

        ctype, stim = kang_labels(adata)
        model.config["latent_means"] = latent_means_from_cells(
            model, adata[~((ctype == cell_type) & stim)], schema).to_dict()
    return model


def parse_override(text: str) -> tuple[str, object]:
    """``"kl_weight=0.1"`` -> ``("kl_weight", 0.1)`` (JSON value, else the string)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--train wants NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def kang_labels(adata):
    """Each Kang cell's type (str array) and whether it was stimulated (bool array): the
    leave-one-cell-type-out scripts' masks."""
    ctype = adata.obs["cell_type"].astype(str).to_numpy()
    return ctype, adata.obs["condition"].astype(str).to_numpy() == "stimulated"


def crispr():
    import anndata as ad

    from engine import Schema

    a = ad.read_h5ad(DATA / "norman2019_mcfaline2023_crispr_train.h5ad")
    a.obs["tissue"] = np.where(a.obs["cell_type"].astype(str) == "k562", "bone marrow",
                               "brain")
    s = Schema(cell_type_key="cell_type", perturbation_key="condition",
               perturbation_type_key="perturbation_type", context_keys=("tissue",),
               control_label="control")
    card = {"summary": "CRISPR activation (K562, singles and doubles) and CRISPR interference "
                       "(glioblastoma lines A172, T98G, U87MG). The perturbation type is part of "
                       "the condition: CRISPRa and CRISPRi of the same gene act in opposite "
                       "directions. Doubles can be given in any order.",
            "data": "norman2019_mcfaline2023_crispr_train.h5ad: 5516 cells x 500 highly "
                    "variable genes, raw UMI counts (Norman et al. 2019, GSE133344; "
                    "McFaline-Figueroa et al. 2024)",
            "citation": "Norman et al., Science 365, 786-793 (2019); McFaline-Figueroa et al., "
                        "Cell Genomics 4, 100487 (2024)",
            "limitations": ["Only 500 genes: perturbed genes outside them are not measured.",
                            "Cells carry ~155 UMIs in these genes: single-cell profiles are "
                            "very sparse; compare groups, not single cells.",
                            "A gene's CRISPRi effect is only known in the glioblastoma lines "
                            "and its CRISPRa effect only in K562; asking for CRISPRi in K562 "
                            "is a prediction by composition.", NO_DOSE]}
    return a, s, card


def papalexi():
    import anndata as ad

    from engine import Schema

    a = ad.read_h5ad(DATA / "papalexi2021_thp1_crispr_ko_train.h5ad")
    a.obs["perturbation_type"] = "knockout"
    s = Schema(cell_type_key="cell_type", perturbation_key="perturbation",
               perturbation_type_key="perturbation_type", control_label="control",
               drop_labels=("unassigned",))
    card = {"summary": "ECCITE-seq CRISPR knockouts of 26 immune regulators in THP-1 "
                       "monocytic cells, all stimulated with IFN-gamma; control = "
                       "non-targeting guides.",
            "data": "papalexi2021_thp1_crispr_ko_train.h5ad: 18299 cells x 299 genes (a random "
                    "gene panel), raw UMI counts (Papalexi et al. 2021, GSE153056)",
            "citation": "Papalexi et al., Nat Genet 53, 322-331 (2021)",
            "notes": "The 4537 cells labelled 'unassigned' (no clear guide) were left out of "
                     "training and evaluation: their perturbation is unknown, and mixing them "
                     "into control or any knockout would blur both.",
            "limitations": ["The 299 genes are a random panel: most knocked-out genes and "
                            "many of their targets are not measured.",
                            "Many knockouts have little effect on these genes in the data; "
                            "for them the model (rightly) predicts cells close to control.",
                            NO_DOSE]}
    return a, s, card


def pbmc68k():
    import anndata as ad

    from engine import Schema

    a = ad.read_h5ad(DATA / "pbmc68k_reduced_counts.h5ad")
    s = Schema(cell_type_key="bulk_labels")
    card = {"summary": "A cell-type atlas of 10 PBMC populations, no perturbations: generates "
                       "reference populations (e.g. to compare perturbed cells with).",
            "data": "pbmc68k_reduced_counts.h5ad: 700 cells x 765 genes (scanpy's "
                    "pbmc68k_reduced with its integer counts; Zheng et al. 2017, 10x)",
            "citation": "Zheng et al., Nat Commun 8, 14049 (2017)",
            "limitations": ["700 cells in all: small populations (CD34+ 13 cells, naive T 8 "
                            "cells) are learned from very few examples.",
                            "No perturbations: asking for one is refused.", NO_DOSE]}
    return a, s, card


# Default classifier-free guidance of each shipped model, chosen on the separate out-of-sample
# experiments (build_scripts/kang_loo.py, build_scripts/crispr_heldout.py), not on the cards'
# held-out split. 1.0 = no guidance (one network evaluation per step).
GUIDANCE = {"kang-ifnb-pbmc": 1.0, "crispr-k562-glioblastoma": 1.0, "papalexi-thp1-ko": 1.0,
            "pbmc68k-celltypes": 1.0}

# Guidance per evidence class, chosen on leave-out folds by build_scripts/choose_guidance.py.
GUIDANCE_BY_EVIDENCE = ROOT / "docs" / "results" / "guidance_by_evidence.json"


# How a cell type never seen with a perturbation is drawn (engine.anchor), chosen on the Kang
# leave-one-cell-type-out folds by build_scripts/choose_anchor.py; models without an entry use
# the flow alone.
ANCHOR = ROOT / "docs" / "results" / "anchor.json"


def anchor_rule(name: str) -> dict | None:
    """The rule for ``config.json["sampling"]["anchor"]`` (without its nested estimate)."""
    if not ANCHOR.is_file():
        return None
    rule = json.loads(ANCHOR.read_text()).get("models", {}).get(name)
    return {k: v for k, v in rule.items() if k != "nested"} if rule else None


def anchor_nested(name: str) -> dict | None:
    """choose_anchor.py's nested estimate for the chosen rule: mean scores per mode on each fold
    scored with the rule chosen on the other folds (one network per fold), or None."""
    if not ANCHOR.is_file():
        return None
    return (json.loads(ANCHOR.read_text()).get("models", {}).get(name) or {}).get("nested")


def guidance_by_evidence(name: str) -> dict[str, float]:
    if not GUIDANCE_BY_EVIDENCE.is_file():
        return {}
    return {str(k): float(v) for k, v in
            json.loads(GUIDANCE_BY_EVIDENCE.read_text()).get("models", {}).get(name, {}).items()}


# Training options beyond engine.train.DEFAULTS. Kang: 200 autoencoder epochs (1,400 steps on
# its 1,938 training cells) matched the noise ceiling in our runs at a third of the default's
# 600-epoch cost on 4,805 genes.
TRAIN = {"kang-ifnb-pbmc": {"ae_epochs": 200}}

MODELS = {"kang-ifnb-pbmc": kang, "crispr-k562-glioblastoma": crispr,
          "papalexi-thp1-ko": papalexi, "pbmc68k-celltypes": pbmc68k}


def evaluate_model(model, test, schema, n_de: dict | None = None, min_de: int = 3,
                   reference=None) -> tuple[list[dict], list[dict], list[str]]:
    """Per-condition results on held-out cells (engine.evaluate.evaluate_many), and group
    summaries (all / singles / doubles / perturbations with a clear effect)."""
    from engine.cards import summarise
    from engine.evaluate import evaluate_many, group_key

    _, uniq = schema.condition_codes(schema.filter(test))
    conds = [c for c in uniq if not c.is_control] or \
            [c for c in uniq]                      # atlas model: score each population
    skipped_why: list = []
    evaluated = evaluate_many(model, test, schema, conds, mode="denovo", seed=0,
                              reference=reference, skipped=skipped_why)
    for c, why in skipped_why:                     # too few held-out cells for this group
        print(f"  skip {c.label}: {why}")
    skipped = [c.label for c, _ in skipped_why]
    scored = [c for c in conds if not any(c is s for s, _ in skipped_why)]
    results = []
    for c, r in zip(scored, evaluated, strict=True):
        d = r.to_dict()
        if n_de is not None and not c.is_control:
            d["n_de_genes_train"] = n_de.get(group_key(model.space.complete(c)))
        results.append(d)
    summary = summarise(results, group="all conditions")
    if n_de is not None:
        clear = [r for r in results if (r.get("n_de_genes_train") or 0) >= min_de]
        if clear and len(clear) < len(results):
            summary += summarise(clear, group=f"clear effect (>= {min_de} DE genes in training "
                                              "cells)")
    singles = [r for r in results if len(r["condition"]["perturbations"]) == 1]
    doubles = [r for r in results if len(r["condition"]["perturbations"]) > 1]
    if singles and doubles:
        summary += summarise(singles, group="single perturbations")
        summary += summarise(doubles, group="double perturbations")
    return results, summary, skipped


# Results of the out-of-distribution experiments, folded into the cards' evidence tables when
# present (written by build_scripts/kang_loo.py --ensemble-json and
# build_scripts/crispr_heldout.py --evidence-json).
OOD_EVIDENCE = {"kang-ifnb-pbmc": ROOT / "docs" / "results" / "kang_loo_ensemble.json",
                "crispr-k562-glioblastoma": ROOT / "docs" / "results" /
                "crispr_heldout_evidence.json"}
# The "new gene" row (genes never perturbed in training) of the models with gene-set target
# priors, written by build_scripts/unseen_genes.py (leave-one-gene-out).
NEW_GENE_EVIDENCE = ROOT / "docs" / "results" / "unseen_genes.json"


def build_evidence(name: str, model, train, test, schema, summary) -> tuple[dict, dict]:
    """The card's evidence table (per kind of condition: held-out scores, best baseline, interval
    coverage) and the calibration factors per kind (engine.assess.ensemble_coverage: DEGs chosen
    on the training cells, coverage cross-fitted over two halves of the conditions)."""
    from engine.assess import ensemble_coverage
    from engine.cards import evidence_entry

    kind = "measured" if model.space.targets else "population"
    cov, _ = ensemble_coverage(model, test, schema, train=train)
    evidence = {kind: evidence_entry(summary, coverage=cov, source="card split: 20% of the "
                                     "cells of every condition held out")}
    calibration = {}
    if cov and cov.get("scale"):
        calibration = {"measured": cov["scale"], "default": cov["scale"]}
    ood = OOD_EVIDENCE.get(name)
    if ood is not None and ood.is_file():
        extra = json.loads(ood.read_text())
        chosen = guidance_by_evidence(name)
        for k, entry in extra.get("evidence", {}).items():
            if k in chosen and "guidance 1" in str(entry.get("source", "")):
                entry["source"] = (
                    f"{entry['source']}; the model now draws this kind of condition at guidance "
                    f"{chosen[k]:g} (chosen on one-network folds, docs/results/"
                    "guidance_by_evidence.txt): this row is not yet rerun at that guidance")
            evidence[k] = entry
        calibration.update(extra.get("calibration", {}))
    if getattr(model, "accepts_new_genes", False) and NEW_GENE_EVIDENCE.is_file():
        rows = json.loads(NEW_GENE_EVIDENCE.read_text()).get("evidence", {}).get(name, {})
        evidence.update({k: v for k, v in rows.items() if v})
    return evidence, calibration


def build(name: str, out_root: Path, *, evaluate_only: bool = False, threads: int = 2) -> dict:
    import torch

    from engine import PerturbModel, train_model
    from engine.cards import plain_sentences, render_markdown, verdicts
    from engine.checkpoint import write_card
    from engine.evaluate import clear_effects, split

    torch.set_num_threads(threads)
    adata, schema, card = MODELS[name]()
    train, test = split(schema.filter(adata), schema)
    t0 = time.perf_counter()
    if evaluate_only:          # same deterministic split, existing weights: refresh the card
        model = PerturbModel.load(out_root / name, device="cpu")
        previous = json.loads((out_root / name / "card.json").read_text())
        model.card = {"loss_history": previous.get("loss_history", {})}
        t0 -= model.config["training"]["seconds"]      # build = training + this evaluation
    else:
        model = train_model(train, schema, out_root / name, seed=0, device="cpu", name=name,
                            overwrite=True, data_file=card["data"].split(":")[0], **TRAIN.get(name, {}))
    by_evidence = guidance_by_evidence(name)
    if model.default_guidance != GUIDANCE[name] or \
            model.config["sampling"].get("guidance_by_evidence", {}) != by_evidence:
        model.config["sampling"]["guidance"] = GUIDANCE[name]
        model.config["sampling"]["guidance_by_evidence"] = by_evidence
        if not by_evidence:
            del model.config["sampling"]["guidance_by_evidence"]
        model.save(model.path, overwrite=True)
    rule = anchor_rule(name)
    if model.config["sampling"].get("anchor") != rule or \
            (rule and "latent_means" not in model.config):
        if rule and "latent_means" not in model.config:     # weights from before the means
            from engine.anchor import latent_means_from_cells

            model.config["latent_means"] = latent_means_from_cells(model, train,
                                                                   schema).to_dict()
        model.config["sampling"].pop("anchor", None)
        if rule:
            model.config["sampling"]["anchor"] = rule
        model.save(model.path, overwrite=True)
    results, summary, skipped = evaluate_model(model, test, schema, clear_effects(train, schema),
                                               reference=train)
    evidence, calibration = build_evidence(name, model, train, test, schema, summary)
    if model.members > 1:
        ens = model.config.setdefault("ensemble", {"members": model.members})
        ens["calibration"] = calibration
        ens["calibration_note"] = (
            "Factor on the member spread giving 90% noise-aware coverage of the real held-out "
            "effects on the top-100 DEGs: 'measured' from the card split"
            + ("; 'new_cell_type' from the leave-one-cell-type-out runs"
               if "new_cell_type" in calibration else "")
            + ". Kinds without their own measurement use 'default' (the measured factor), "
              "which is likely too narrow for them.")
        model.save(model.path, overwrite=True)
    card["members"] = model.members
    card.update({
        "name": name, "split": f"stratified hold-out: 20% of the cells of every condition group "
                               f"(seed 0); trained on {train.n_obs} cells, evaluated on "
                               f"{test.n_obs} held-out cells",
        "training": model.config["training"], "conditions": model.config["space"],
        "genes": model.genes, "metrics": summary, "verdicts": verdicts(summary),
        "skipped": skipped, "sampling": model.config["sampling"],
        "per_condition": results, "loss_history": model.card.get("loss_history", {}),
        "evidence": evidence,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "reproduce": f"python build_scripts/train_models.py --only {name}"})
    card["plain"] = plain_sentences(card)
    write_card(model.path, card, render_markdown(model.config, card))
    print(f"{name}: trained in {model.config['training']['seconds']} s")
    for v in card["verdicts"]:
        print("  " + v)
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="*", choices=sorted(MODELS))
    p.add_argument("--out", type=Path, default=ROOT / "resources" / "models")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads for torch (default 2; on a 2-core machine two builds with "
                        "1 thread each use it better than one with 2)")
    p.add_argument("--evaluate-only", action="store_true",
                   help="keep the weights, re-run the held-out evaluation and rewrite the cards")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    summary = {}
    for name in args.only or MODELS:
        card = build(name, args.out, evaluate_only=args.evaluate_only, threads=args.threads)
        summary[name] = card["metrics"]
    print(json.dumps(summary, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
