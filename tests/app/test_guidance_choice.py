"""Issue 14: the composer's guidance box offers the model's per-evidence-class choice."""

from __future__ import annotations

from tests.app.test_flows import _compose, _use_model


def test_guidance_box_offers_the_models_choice(qtbot, window, model_name):
    from app.panels.composer import AUTO_GUIDANCE

    w = window
    _use_model(qtbot, w, model_name)
    model = w.session.model
    c = _compose(w)
    if model.guidance_by_evidence:          # the shipped Kang model chose 2 for new cell types
        assert c.guidance.value() == AUTO_GUIDANCE
    c.guidance.setValue(AUTO_GUIDANCE)
    assert c.guidance.text() == "model's choice"
    assert c.request().guidance is None
    c.guidance.setValue(2.0)
    assert c.request().guidance == 2.0


def test_copied_command_leaves_the_models_choice_to_the_model():
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from app.experiment import Experiment
    from app.session_io import commands

    def exp(**prov):
        obs = pd.DataFrame({"condition": ["T | A"] * 2 + ["T | control"] * 2,
                            "cell_type": ["T"] * 4, "perturbation": ["A"] * 2 + ["control"] * 2,
                            "is_control": [False] * 2 + [True] * 2},
                           index=[f"c{i}" for i in range(4)])
        a = ad.AnnData(sp.csr_matrix(np.ones((4, 2), np.float32)), obs=obs,
                       var=pd.DataFrame(index=["g1", "g2"]))
        a.layers["counts"] = a.X.copy()
        a.uns["perturb_studio"] = {
            "model": "m", "seed": 7, "steps": 5, "guidance": 2.0, **prov,
            "conditions_json": '[{"cell_type": "T", "perturbations": [{"target": "A", '
                               '"type": null, "dose": null}], "context": {}}]'}
        return Experiment.from_generated(a, model_name="m")

    given = next(x for x in commands(exp()) if x.startswith("perturb-studio generate"))
    auto = next(x for x in commands(exp(guidance_rule="by evidence class"))
                if x.startswith("perturb-studio generate"))
    assert "--guidance=2" in given
    assert "--guidance" not in auto and "--seed=7 --steps=5" in auto


def test_composer_says_which_guidance_a_new_cell_type_gets(qtbot, window, model_name):
    from app.panels.composer import AUTO_GUIDANCE

    w = window
    _use_model(qtbot, w, model_name)
    model = w.session.model
    c = _compose(w, cell_type="CD4T")
    c.guidance.setValue(AUTO_GUIDANCE)
    line = c._evidence_line(model.space.complete(c.conditions()[0]))
    if model.guidance_by_evidence.get("measured") is None:
        assert "drawn at guidance" not in line      # measured: the default scale, not named
    # a model whose table covers the measured class names the scale it will use
    sampling = model.config["sampling"]
    before = dict(sampling)
    try:
        sampling["guidance_by_evidence"] = {"measured": 1.5}
        line = c._evidence_line(model.space.complete(c.conditions()[0]))
        assert "drawn at guidance 1.5" in line
        c.guidance.setValue(1.0)                     # a scale the user chose: nothing to add
        assert "drawn at guidance" not in c._evidence_line(
            model.space.complete(c.conditions()[0]))
    finally:                                         # the loaded model may be shared
        sampling.clear()
        sampling.update(before)


def test_composer_says_where_an_anchored_condition_starts(qtbot, window, model_name,
                                                          monkeypatch):
    """engine.anchor: a condition drawn from the latent baseline says so in its evidence line
    (the shipped Kang model measured every cell type, so the anchor is faked here)."""
    from app.panels.composer import AUTO_GUIDANCE
    from engine import Condition

    w = window
    _use_model(qtbot, w, model_name)
    model = w.session.model
    c = _compose(w, cell_type="CD4T")
    c.guidance.setValue(AUTO_GUIDANCE)
    cond = model.space.complete(c.conditions()[0])
    assert "starts from" not in c._evidence_line(cond)        # measured: the flow alone
    groups = [Condition.parse(t, "stimulated") for t in ("B", "NK")]
    monkeypatch.setattr(model, "anchor_for", lambda _c: (None, groups, None))
    line = c._evidence_line(cond)
    assert "starts from the CD4T control cells plus the effect measured in 2 other cell " \
           "types" in line
    assert "drawn at guidance" not in line
    assert "then refined by the model" in line            # the Kang rule refines from 0.2
    # a rule that uses the start as it is (the CRISPR model's) says so instead
    from engine.anchor import AnchorRule

    monkeypatch.setattr(type(model), "anchor_rule", property(lambda _m: AnchorRule(refine=0.0)))
    line = c._evidence_line(cond)
    assert "used as they are (not refined by the model)" in line
    assert "then refined" not in line


def test_a_gene_new_in_a_cell_line_says_it_starts_from_the_measured_effect(qtbot, window):
    """The shipped CRISPR model anchors a gene measured in other lines but new in this one:
    the form says so (and that the start is used as it is), with the card's held-out score."""
    w = window
    _use_model(qtbot, w, "crispr-k562-glioblastoma")
    c = _compose(w, cell_type="T98G", target="SGK1")
    row = c.perts.rows[0]
    row.target.editingFinished.emit()
    row.type.setCurrentText("CRISPRi")
    c._validate()
    text = c.check.text()
    assert "never measured in the training data; the model predicts it from the measured " \
           "effect elsewhere" in text
    assert "starts from the T98G control cells plus the effect measured in 2 other cell " \
           "types, used as they are (not refined by the model)" in text
    assert "mean shift baseline 0.83" in text             # the card's new-cell-type row
