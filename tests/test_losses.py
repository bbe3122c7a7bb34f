"""Routing regularisers against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from routealign.losses import gate_entropy, load_balance, routing_regulariser


def test_load_balance_by_hand():
    # Two tokens, two outputs. Opposite one-hot routes: mean share (0.5, 0.5) → 2·(0.25 + 0.25) = 1.
    assert load_balance(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(1.0)
    # Both tokens on output 0: mean (1, 0) → 2·1 = 2, the maximum for n = 2.
    assert load_balance(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(2.0)
    # n = 4, one token at (0.4, 0.3, 0.2, 0.1): 4·(0.16 + 0.09 + 0.04 + 0.01) = 1.2.
    assert load_balance(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).item() == pytest.approx(1.2)


def test_load_balance_ignores_masked_positions():
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # [batch 1, seq 3, n 2]
    mask = torch.tensor([[1, 0, 1]])  # the middle (padding) token does not count → mean (1, 0) → 2
    assert load_balance(probs, mask).item() == pytest.approx(2.0)


def test_entropy_by_hand():
    # (0.5, 0.5): ln 2 = 0.693147; (1, 0): 0; their mean 0.346574.
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert gate_entropy(probs).item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    # (0.25, 0.75): −(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335.
    assert gate_entropy(torch.tensor([[0.25, 0.75]])).item() == pytest.approx(0.562335, abs=1e-6)


def test_regulariser_averages_gates_and_weights_terms():
    uniform = torch.full((1, 2, 2), 0.5)  # token gate [batch, seq, n]: balance 1, entropy ln 2
    onehot = torch.tensor([[1.0, 0.0]])  # sequence gate [batch, n]: balance 2, entropy 0
    got = routing_regulariser([uniform, onehot], torch.ones(1, 2), load_balance_coef=0.1, entropy_coef=1.0)
    # ((0.1·1 + ln 2) + (0.1·2 + 0)) / 2 = (0.793147 + 0.2) / 2 = 0.496574
    assert got.item() == pytest.approx((0.1 + math.log(2) + 0.2) / 2, abs=1e-6)


def _grad(lb: float, ent: float, *, extra_gate: bool = False) -> torch.Tensor:
    """d regulariser / d logits for a token gate [1, 2, 2] whose first position has logits (0, ln 3)
    and whose second (masked out) position has (2, −1)."""
    logits = torch.tensor([[[0.0, math.log(3)], [2.0, -1.0]]], requires_grad=True)
    gates = [logits.softmax(-1)] + ([torch.tensor([[0.5, 0.5]])] if extra_gate else [])
    routing_regulariser(gates, torch.tensor([[1, 0]]), load_balance_coef=lb, entropy_coef=ent).backward()
    return logits.grad[0]


def test_regulariser_has_gradients_by_hand():
    """p = softmax(0, ln 3) = (1/4, 3/4); through the softmax, dL/dz_i = p_i·(g_i − Σ_j p_j g_j), g = dL/dp.

    Balance 2·(p0² + p1²): g = 4p = (1, 3), Σ p·g = 1/4 + 9/4 = 2.5,
      dz = (1/4·(1 − 2.5), 3/4·(3 − 2.5)) = (−0.375, +0.375): descent raises the smaller share (balance).
    Entropy −Σ p ln p: g = −(ln p + 1) = (0.386294, −0.712318), Σ p·g = 0.096574 − 0.534239 = −0.437665,
      dz = (1/4·0.823959, 3/4·(−0.274653)) = (+0.205990, −0.205990): descent sharpens the route.
    Both at coefficient 1: (−0.169010, +0.169010); averaged with a second (constant) gate: halved,
    (−0.084505, +0.084505). The masked second position gets no gradient at all.
    """
    balance, entropy = _grad(1.0, 0.0), _grad(0.0, 1.0)
    assert balance[0].tolist() == pytest.approx([-0.375, 0.375], abs=1e-6)
    assert entropy[0].tolist() == pytest.approx([0.205990, -0.205990], abs=1e-6)
    assert _grad(1.0, 1.0)[0].tolist() == pytest.approx([-0.169010, 0.169010], abs=1e-6)
    assert _grad(0.5, 0.0)[0].tolist() == pytest.approx(
        [-0.1875, 0.1875], abs=1e-6
    )  # linear in the coefficient
    assert _grad(1.0, 1.0, extra_gate=True)[0].tolist() == pytest.approx([-0.084505, 0.084505], abs=1e-6)
    for grad in (balance, entropy, _grad(1.0, 1.0, extra_gate=True)):
        assert grad[1].tolist() == [0.0, 0.0]
    logits = torch.randn(2, 3, 4, requires_grad=True)  # and any gate with no mask gets some gradient
    routing_regulariser([logits.softmax(-1)], None, 1.0, 1.0).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
