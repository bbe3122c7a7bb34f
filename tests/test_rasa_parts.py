"""RASA's maths against numbers worked by hand: routing KL, mean routing, risk difference, selection."""

from __future__ import annotations

import math

import pytest
import torch

from routealign.losses import mean_routing, routing_kl
from routealign.methods.rasa.selection import (
    by_layer,
    frequencies,
    random_slots,
    risk_difference,
    select_experts,
    top_positive,
)


def test_routing_kl_by_hand():
    """One layer: KL([.5, .5] ‖ [.25, .75]) = .5 ln 2 + .5 ln(2/3) = 0.143841; a second layer with equal
    distributions adds 0, and the mean over the two layers halves it."""
    plain = torch.tensor([[0.5, 0.5], [0.3, 0.7]])
    jailbreak = torch.tensor([[0.25, 0.75], [0.3, 0.7]])
    expected = (0.5 * math.log(2) + 0.5 * math.log(2 / 3)) / 2
    assert float(routing_kl(plain, jailbreak)) == pytest.approx(expected, abs=1e-6)
    assert float(routing_kl(plain, plain)) == 0.0


def test_mean_routing_averages_positions_then_samples_without_padding():
    """Row 0: logits (0, 0) → (.5, .5) at both positions. Row 1: logits (ln 3, 0) → (.75, .25), then a
    padded position whose huge logit must not count. Mean over rows: (.625, .375)."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[math.log(3), 0.0], [100.0, 0.0]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert mean_routing(logits, mask).tolist() == pytest.approx([0.625, 0.375])


def test_mean_routing_of_a_sigmoid_router_normalises_its_scores():
    """DeepSeek-V3 scores experts by sigmoid: logits (0, ln 3) → scores (.5, .75) → (.4, .6)."""
    logits = torch.tensor([[[0.0, math.log(3)]]])
    assert mean_routing(logits, torch.ones(1, 1), "sigmoid").tolist() == pytest.approx([0.4, 0.6])


def test_risk_difference_by_hand():
    """Two pairs, one layer, three experts, top-1. Jailbreak answers: 4 tokens (expert 0 ×3, expert 2 ×1)
    and 4 tokens (expert 0 ×4) → f_jb = (7/8, 0, 1/8). Plain: 2 tokens on expert 1, 2 on expert 2 →
    f_plain = (0, 1/2, 1/2). RD = (7/8, -1/2, -3/8)."""
    jb = (torch.tensor([[[3, 0, 1]], [[4, 0, 0]]]), torch.tensor([4, 4]))
    plain = (torch.tensor([[[0, 1, 0]], [[0, 1, 2]]]), torch.tensor([1, 3]))
    assert frequencies(*jb).tolist() == [[7 / 8, 0, 1 / 8]]
    assert risk_difference(jb, plain).tolist() == [[7 / 8, -1 / 2, -3 / 8]]


def test_top_positive_keeps_only_positive_scores_largest_first():
    rd = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    assert top_positive(rd, 3) == [(1, 0), (0, 0)]
    assert top_positive(rd, 1) == [(1, 0)]


def test_selection_is_the_union_of_per_batch_top_n():
    """Pair 0 lights up slot (0, 0), pair 1 slot (0, 1) (one layer, two experts, top-1, one token
    each). Per batch of one pair: top-1 = (0, 0), then (0, 1): union both. Globally they tie at 1/2 and
    the first wins."""
    jb = (torch.tensor([[[1, 0]], [[0, 1]]]), torch.tensor([1, 1]))
    plain = (torch.tensor([[[0, 0]], [[0, 0]]]), torch.tensor([1, 1]))
    selection = select_experts(jb, plain, top_n=1, batch_size=1)
    assert selection.batches == [[(0, 0)], [(0, 1)]]
    assert selection.union == [(0, 0), (0, 1)] and selection.global_top == [(0, 0)]
    assert by_layer(selection.union) == {0: [0, 1]}


def test_random_slots_are_distinct_and_seeded():
    slots = random_slots((4, 8), 5, seed=1)
    assert (
        len(set(slots)) == 5
        and slots == random_slots((4, 8), 5, seed=1)
        and slots != random_slots((4, 8), 5, seed=2)
    )
    assert all(0 <= layer < 4 and 0 <= expert < 8 for layer, expert in slots)
