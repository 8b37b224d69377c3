"""The typed requests and results between pages, controller and jobs (issue 9 #2): fields are
named, frozen, and the cell counts the run bar announces come from one place."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def _cond(cell_type, target=None):
    from engine import Condition, Perturbation

    return Condition.make(cell_type, [Perturbation(target)] if target else [])


def test_generate_request_counts_conditions_and_their_controls():
    from app.messages import GenerateRequest

    stim_mono, stim_t = _cond("CD14+Mono", "stimulated"), _cond("CD4T", "stimulated")
    req = GenerateRequest(conditions=[stim_mono, stim_t], n=60, seed=0, steps=4, guidance=1.0)
    assert req.conditions == (stim_mono, stim_t)   # stored as a tuple
    assert req.n_controls == 2 and req.n_total == 240
    # a control already queued is not generated twice
    req = GenerateRequest(conditions=[stim_mono, _cond("CD14+Mono")], n=10, seed=0, steps=4,
                          guidance=1.0)
    assert req.n_controls == 0 and req.n_total == 20
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.n = 5


def test_requests_have_the_fields_the_controller_reads():
    from app.messages import GenerateRequest, PerturbRequest, TrainRequest

    assert [f.name for f in dataclasses.fields(GenerateRequest)] == \
        ["conditions", "n", "seed", "steps", "guidance"]
    assert [f.name for f in dataclasses.fields(PerturbRequest)] == \
        ["cell_index", "condition", "seed", "steps"]
    assert [f.name for f in dataclasses.fields(TrainRequest)] == \
        ["name", "backbone", "seed", "overrides"]
    t = TrainRequest("m", "mlp", 0)
    assert t.overrides == {} and dataclasses.replace(t, overrides={"flow_steps": 5}).overrides \
        == {"flow_steps": 5}


def test_embedding_counts_generated_and_real_points():
    import pandas as pd

    from app.messages import Embedding

    meta = pd.DataFrame({"source": ["generated"] * 3 + ["real"] * 2,
                         "condition": list("abcde"), "cell type": [""] * 5})
    e = Embedding(np.zeros((5, 2)), meta, {})
    assert (e.n_generated, e.n_real) == (3, 2)
