"""Preference losses against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from routealign.losses import gate_regulariser, preference_margin, sequence_logps, spe_dpo_loss

IGNORE = -100


def test_sequence_logps_by_hand():
    """Three positions, vocabulary 2; labels [IGNORE, 1, 0]: position 0 predicts token 1, position 1
    predicts token 0, position 2 predicts nothing.
    Position 0 logits (0, 0): p(1) = 1/2, log = −0.693147. Position 1 logits (ln 3, 0): p(0) = 3/4,
    log = −0.287682. Sum −0.980829. Position 2's huge logits must not count."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [50.0, -50.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    assert sequence_logps(logits, labels).tolist() == pytest.approx([-0.980829], abs=1e-6)


def test_sequence_logps_skips_prompt_and_padding_per_row():
    """Row 2 is row 1 with its last label masked (padding): it loses exactly that token's log-prob."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    logits[1] = logits[0]
    labels = torch.tensor([[IGNORE, IGNORE, 3, 5, 1], [IGNORE, IGNORE, 3, 5, IGNORE]])
    got = sequence_logps(logits, labels)
    logp = torch.log_softmax(logits[0], -1)
    full = logp[1, 3] + logp[2, 5] + logp[3, 1]
    assert got[0].item() == pytest.approx(full.item(), abs=1e-5)
    assert got[1].item() == pytest.approx((full - logp[3, 1]).item(), abs=1e-5)


def test_sequence_logps_gradient_reaches_only_labelled_positions():
    logits = torch.zeros(1, 4, 3, requires_grad=True)
    sequence_logps(logits, torch.tensor([[IGNORE, IGNORE, 2, IGNORE]])).sum().backward()
    # Only position 1 (which predicts label 2) gets a gradient: (onehot − softmax) = (−1/3, −1/3, 2/3).
    assert logits.grad[0, 1].tolist() == pytest.approx([-1 / 3, -1 / 3, 2 / 3], abs=1e-6)
    assert logits.grad[0, [0, 2, 3]].abs().sum().item() == 0.0


def test_dpo_by_hand():
    """β 0.1; policy log-probs chosen −10, rejected −12; reference −11 for both.
    Δ_w = 1, Δ_l = −1, logit = 0.1·2 = 0.2, loss = log(1 + e^−0.2) = log 1.818731 = 0.598139.
    Rewards: chosen 0.1, rejected −0.1, margin 0.2, accuracy 1."""
    out = spe_dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1
    )
    assert out.loss.item() == pytest.approx(0.598139, abs=1e-6)
    metrics = out.metrics()
    assert metrics["rewards/chosen"] == pytest.approx(0.1)
    assert metrics["rewards/rejected"] == pytest.approx(-0.1)
    assert metrics["rewards/margins"] == pytest.approx(0.2)
    assert metrics["rewards/accuracies"] == 1.0


def test_spe_dpo_margin_lowers_the_logit_by_hand():
    """The same pair with margin 0.5: logit 0.2 − 0.5 = −0.3, loss = log(1 + e^0.3) = log 2.349859 =
    0.854355. Second pair: β 0.1, Δ_w = −2, Δ_l = 0 → logit −0.2, margin 0 → log(1 + e^0.2) = 0.798139.
    Mean 0.826247; accuracy 1/2."""
    out = spe_dpo_loss(
        torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -7.0]),
        torch.tensor([-11.0, -3.0]), torch.tensor([-11.0, -7.0]),
        beta=0.1, margin=torch.tensor([0.5, 0.0]),
    )  # fmt: skip
    assert out.losses.tolist() == pytest.approx([0.854355, 0.798139], abs=1e-6)
    assert out.loss.item() == pytest.approx(0.826247, abs=1e-6)
    assert out.metrics()["rewards/accuracies"] == 0.5


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-10.0], requires_grad=True), torch.tensor([-12.0], requires_grad=True)
    spe_dpo_loss(pc, pr, torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1).loss.backward()
    # d/dpc of −log σ(z) = −β·σ(−z); σ(−0.2) = 0.450166 → −0.045017; rejected the opposite sign.
    assert pc.grad.item() == pytest.approx(-0.0450166, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.0450166, abs=1e-6)


def test_preference_margin_by_hand():
    # Costs (lower = safer): chosen 0.2, rejected 1.5 → max(0, 1.5 − 0.2) = 1.3; scorer disagrees → 0.
    got = preference_margin(torch.tensor([0.2, 2.0]), torch.tensor([1.5, 1.0]), "worse")
    assert got.tolist() == pytest.approx([1.3, 0.0])
    # Rewards (higher = better): chosen 3, rejected 1 → 2; chosen 1, rejected 3 → 0.
    got = preference_margin(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0]), "better")
    assert got.tolist() == pytest.approx([2.0, 0.0])
    with pytest.raises(ValueError, match="higher_is"):
        preference_margin(torch.tensor([1.0]), torch.tensor([0.0]), "safer")


def test_gate_regulariser_by_hand():
    """a = (0.2, 0.6, 0.9), b = (0.5, 1.0, 0.1), the third position padding.
    mean|a| = (0.2 + 0.6)/2 = 0.4; mean|b − 1| = (0.5 + 0)/2 = 0.25; total 0.65.
    Without the mask: 1.7/3 + 1.4/3 = 1.033333."""
    a, b = torch.tensor([[0.2, 0.6, 0.9]]), torch.tensor([[0.5, 1.0, 0.1]])
    assert gate_regulariser(a, b, torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.65)
    assert gate_regulariser(a, b).item() == pytest.approx(3.1 / 3)
    assert gate_regulariser(
        a.unsqueeze(-1), b.unsqueeze(-1), torch.tensor([[1, 1, 0]])
    ).item() == pytest.approx(0.65)
    with pytest.raises(ValueError, match="no position"):
        gate_regulariser(a, b, torch.zeros(1, 3))
