"""Condition embedders: set invariance, hierarchy behaviour, encoding of conditions."""

from __future__ import annotations

import torch

from engine import Condition, Perturbation
from engine.conditions.embedders import ConditionEncoder, HierarchicalEmbedder, SetEmbedder
from engine.conditions.vocab import Vocab


def test_set_embedder_is_order_invariant_and_ignores_padding():
    torch.manual_seed(0)
    enc = ConditionEncoder([2, 3], n_targets=5, n_types=2, dim=16)
    levels = torch.tensor([[1, 2], [1, 2]])
    t1 = torch.tensor([[1, 4, 2], [2, 1, 4]])
    ty = torch.tensor([[1, 2, 1], [1, 1, 2]])
    do = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2]])
    out = enc(levels, t1, ty, do, torch.zeros(2, dtype=torch.bool))
    torch.testing.assert_close(out[0], out[1])
    pad = enc(levels[:1], torch.tensor([[1, 0, 0]]), torch.tensor([[1, 0, 0]]),
              torch.tensor([[0.1, 9.0, 9.0]]), torch.zeros(1, dtype=torch.bool))
    single = enc(levels[:1], torch.tensor([[1]]), torch.tensor([[1]]), torch.tensor([[0.1]]),
                 torch.zeros(1, dtype=torch.bool))
    torch.testing.assert_close(pad, single)


def test_set_embedder_control_and_null_are_distinct():
    s = SetEmbedder(8)
    torch.nn.init.normal_(s.control)
    torch.nn.init.normal_(s.null)
    elems = torch.randn(3, 2, 8)
    mask = torch.tensor([[False, False], [True, False], [True, False]])
    out = s(elems, mask, torch.tensor([False, False, True]))
    torch.testing.assert_close(out[0], s.control)
    torch.testing.assert_close(out[2], s.null)
    assert not torch.allclose(out[1], s.control)


def test_hierarchy_absent_levels_fall_back_to_parent():
    torch.manual_seed(0)
    h = HierarchicalEmbedder([2, 4], 8)
    for mix in h.mix:
        torch.nn.init.normal_(mix[-1].weight)
    full = h(torch.tensor([[1, 3]]))
    parent = h(torch.tensor([[1, 0]]))
    root = h(torch.tensor([[0, 0]]))
    torch.testing.assert_close(root[0], h.root)
    assert not torch.allclose(full, parent) and not torch.allclose(parent, root)


def test_vocab_encodes_sorted_sets_and_contexts():
    conds = [Condition.make("T", [Perturbation("B", "KO"), Perturbation("A", "KO")],
                            {"organism": "human"}),
             Condition.make("B", [], {"organism": "human"})]
    v = Vocab.from_conditions(conds, ["organism"])
    assert v.levels == ["organism", "cell_type"] and v.targets == ["A", "B"]
    arr = v.encode(conds)
    assert arr.targets.tolist() == [[1, 2], [0, 0]]
    assert arr.levels.tolist() == [[1, 2], [1, 1]]
    # the same condition typed in the other order encodes identically
    again = v.encode([Condition.make("T", [Perturbation("A", "KO"), Perturbation("B", "KO")],
                                     {"organism": "human"})])
    assert again.targets.tolist() == [[1, 2]]
