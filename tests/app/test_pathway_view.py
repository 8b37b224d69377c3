"""The Results page's "Pathway tokens" view (app.views.pathway_view): a ranked bar plot of the
per-token change for a model with pathway tokens; for any other model, the reason."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.engine.conftest import TINY, make_synthetic
from tests.engine.test_pathway_tokens import GMT


@pytest.fixture(scope="module")
def pathway_model(tmp_path_factory):
    import torch

    from engine import Schema, train_model

    d = tmp_path_factory.mktemp("genesets")
    (d / "hallmark_v7.5.1.gmt").write_text(GMT)
    mp = pytest.MonkeyPatch()
    mp.setenv("PERTURB_STUDIO_GENESETS_DIR", str(d))
    torch.set_num_threads(1)
    schema = Schema(cell_type_key="cell_type", perturbation_key="perturbation",
                    perturbation_type_key="ptype", control_label="control")
    try:
        yield train_model(make_synthetic(), schema, None, seed=0, device="cpu",
                          backbone="pathway-transformer", tokens=4, min_genes=5, heads=2,
                          **{**TINY, "width": 16, "members": 2})
    finally:
        mp.undo()


def _experiment(model):
    from app.experiment import Experiment
    from engine import Condition

    cond = Condition.parse("T", "A", "CRISPRa")
    cells = model.generate_many([cond], 30, seed=0)
    return Experiment.from_generated(cells, model_name="pw", conditions=[cond], model=model)


def test_pathway_view_ranks_the_tokens_with_member_spread(pathway_model):
    from app import figures
    from app.views import build_view

    exp = _experiment(pathway_model)
    label = exp.labels[0]
    res = build_view("pathways", exp, {"label": label})
    assert res.data["available"] and res.data["label"] == label
    assert res.data["names"] == ["A_UP", "B_UP", "MARKERS"]
    assert res.data["ranked"][0][0] == "A_UP" and res.data["ranked"][0][1] > 0
    assert np.all(res.data["spread"] > 0)                  # two members: a spread per token
    ax = res.figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "A_UP"     # largest on top
    assert "2 members" in ax.get_title()
    assert "fixed linear map" in res.note and "A_UP (+" in res.note
    assert figures.render_png(res.figure)[:4] == b"\x89PNG"
    # no label given: the first condition
    assert build_view("pathways", exp, {}).data["label"] == label


def test_pathway_view_says_why_it_is_unavailable(pathway_model):
    from app.views import build_view

    exp = _experiment(pathway_model)
    label = exp.labels[0]
    exp.model = SimpleNamespace(config={"architecture": {"backbone": "mlp"}})
    res = build_view("pathways", exp, {"label": label})
    assert not res.data["available"] and "mlp backbone" in res.note
    assert "--backbone pathway-transformer" in res.note and "Gene sets tab" in res.note
    exp.model = None
    res = build_view("pathways", exp, {"label": label})
    assert not res.data["available"] and "not loaded" in res.note
