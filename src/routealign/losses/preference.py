"""Preference losses: sequence log-probabilities, (SPE-)DPO and MidPO's gate regulariser.

SPE-DPO (MidPO, Qi et al., arXiv 2506.02460) is DPO whose logit is lowered by a preference margin from a
scorer: with Δ(y) = log π_θ(y|x) − log π_ref(y|x) summed over response tokens,

    L = −log σ( β·(Δ(y_w) − Δ(y_l)) − m ),    m = max(0, g(y_w) − g(y_l))

where g is the scorer's "goodness" (a reward, or a cost with its sign flipped: the safety expert's
``max(0, c(y_l) − c(y_w))``). With no scorer m = 0 and this is plain DPO (Rafailov et al., 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(labels[t] | tokens before t) over the labelled positions of each row: ``[B]``.

    ``logits [B, T, V]`` come from a causal LM fed ``input_ids`` whose copy with prompt and padding set
    to ``IGNORE`` is ``labels [B, T]``; position t's logits predict token t + 1.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    # Row by row: log_softmax over the whole [B, T, V] block would hold a second copy of it in float32.
    out = []
    for row_logits, row_index, row_mask in zip(logits, index, mask, strict=True):
        row_logits = row_logits.float()
        token = row_logits.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row_logits, dim=-1)
        out.append((token * row_mask).sum())
    return torch.stack(out)


def preference_margin(chosen: torch.Tensor, rejected: torch.Tensor, higher_is: str) -> torch.Tensor:
    """max(0, g(chosen) − g(rejected)), g = score when ``higher_is == "better"`` (a reward) and −score
    when ``"worse"`` (a cost: lower = safer). 0 where the scorer disagrees with the preference label."""
    if higher_is == "better":
        gap = chosen - rejected
    elif higher_is == "worse":
        gap = rejected - chosen
    else:
        raise ValueError(f"higher_is: must be 'better' or 'worse', got {higher_is!r}")
    return gap.clamp_min(0.0)


@dataclass
class DPOOutput:
    losses: torch.Tensor
    """Per pair, ``[B]``."""
    chosen_rewards: torch.Tensor
    """β·Δ(y_w), detached."""
    rejected_rewards: torch.Tensor
    """β·Δ(y_l), detached."""

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    def metrics(self) -> dict[str, float]:
        """What TRL's DPO trainer logs, under the same names, so logs read alike."""
        margins = self.chosen_rewards - self.rejected_rewards
        return {
            "rewards/chosen": self.chosen_rewards.mean().item(),
            "rewards/rejected": self.rejected_rewards.mean().item(),
            "rewards/margins": margins.mean().item(),
            "rewards/accuracies": (margins > 0).float().mean().item(),
        }


def spe_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    margin: torch.Tensor | None = None,
) -> DPOOutput:
    """−log σ(β·((π_w − ref_w) − (π_l − ref_l)) − margin) per pair; all inputs are sequence log-probs
    ``[B]`` (``margin`` from :func:`preference_margin`; None = 0 = plain DPO)."""
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    logits = beta * (chosen - rejected)
    if margin is not None:
        logits = logits - margin.to(logits)
    return DPOOutput(-F.logsigmoid(logits), (beta * chosen).detach(), (beta * rejected).detach())


def gate_regulariser(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MidPO stage B: mean|a| + mean|b − 1| over the counted positions (padding excluded).

    ``a`` (safety gate) and ``b`` (helpfulness gate) are sigmoid outputs ``[B, T]`` (or ``[B, T, 1]``);
    the term pulls toward "the helpfulness expert unless safety is needed".
    """
    a, b = a.reshape(a.shape[0], -1).float(), b.reshape(b.shape[0], -1).float()
    if mask is None:
        return a.abs().mean() + (b - 1).abs().mean()
    keep = mask.reshape(a.shape).bool()
    if not keep.any():
        raise ValueError("gate_regulariser: the mask counts no position")
    return a[keep].abs().mean() + (b[keep] - 1).abs().mean()
