"""The sampling loop as a generator (issue 9 #6): every step yielded, cancel at every step."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.diffusion.sampler import sample, sample_progressive
from engine.diffusion.schedules import RectifiedFlow
from engine.errors import Cancelled


def _net(x, t, c):
    return c.expand_as(x)          # the "condition" is the velocity


def test_yields_every_step_with_its_time():
    rf = RectifiedFlow()
    x = torch.zeros(3, 2)
    steps = list(sample_progressive(_net, rf, x, torch.ones(1, 2), None, 1.0, rf.grid(5)))
    assert [s.index for s in steps] == [1, 2, 3, 4, 5]
    assert all(s.total == 5 for s in steps)
    assert [s.t for s in steps] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    torch.testing.assert_close(steps[-1].x, torch.full((3, 2), -1.0))


def test_guidance_extrapolates_from_the_null_condition():
    rf = RectifiedFlow()
    out = sample(_net, rf, torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1), 3.0,
                 rf.grid(2))
    torch.testing.assert_close(out, torch.full((1, 1), -3.0))


def test_cancel_stops_at_the_next_step():
    rf = RectifiedFlow()
    token, seen = threading.Event(), []

    def on_step(i):
        seen.append(i)
        if i == 3:
            token.set()

    with pytest.raises(Cancelled):
        sample(_net, rf, torch.zeros(1, 1), torch.ones(1, 1), None, 1.0, rf.grid(10),
               on_step=on_step, cancel=token)
    assert seen == [1, 2, 3]


def test_model_generation_reports_progress_through_the_sampler(tiny_model):
    from engine import Condition

    done = []
    tiny_model.generate(Condition(cell_type=tiny_model.space.cell_types[0]), 10, seed=0,
                        steps=4, progress=lambda *a, **k: done.append(a))
    assert done


def test_provenance_lists_the_context_levels(tiny_model):
    from engine import Condition
    from engine.keys import UNS

    a = tiny_model.generate(Condition(cell_type=tiny_model.space.cell_types[0]), 5, seed=0,
                            steps=2)
    levels = a.uns[UNS.PROVENANCE]["context_levels"]
    assert levels == [lv for lv in tiny_model.vocab.levels if lv != "cell_type"]
    assert all(lv in a.obs for lv in levels)
