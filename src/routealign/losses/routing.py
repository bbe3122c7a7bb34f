"""Regularisers on gate probabilities (SafeMoE stage B; both off by default), and RASA's routing
consistency loss on a native MoE model's router logits.

``probs`` are softmax outputs ``[..., n]`` over the n gate outputs (experts, plus the null expert when
it is on); ``mask`` marks the positions that count (padding excluded).
"""

from __future__ import annotations

import torch


def _flatten(probs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = probs.reshape(-1, probs.shape[-1])
    if mask is None:
        return flat
    return flat[mask.reshape(-1).bool()]


def load_balance(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """n · Σ_e p̄_e², with p̄ the mean probability per output over counted positions.

    1 when every output gets the same mean share, n when one output takes everything; the soft
    counterpart of the Switch-Transformer balance loss, which needs hard top-1 counts.
    """
    mean = _flatten(probs, mask).float().mean(0)
    return mean.numel() * (mean**2).sum()


def gate_entropy(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions of −Σ_e p_e log p_e (0 for one-hot routing, log n for uniform)."""
    p = _flatten(probs, mask).float()
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()


def routing_regulariser(
    probs: list[torch.Tensor], token_mask: torch.Tensor | None, load_balance_coef: float, entropy_coef: float
) -> torch.Tensor:
    """Average the two terms over every gate that ran in a forward pass, weighted by their coefficients."""
    total = probs[0].new_zeros(())
    for p in probs:
        mask = token_mask if (token_mask is not None and p.dim() == 3) else None
        if load_balance_coef:
            total = total + load_balance_coef * load_balance(p, mask)
        if entropy_coef:
            total = total + entropy_coef * gate_entropy(p, mask)
    return total / len(probs)


def mean_routing(logits: torch.Tensor, mask: torch.Tensor, scoring: str = "softmax") -> torch.Tensor:
    """``logits [B, T, E]`` of one router, ``mask [B, T]`` → ``q [E]``: the router's distribution over
    experts averaged over each sample's counted positions, then over samples (a long jailbreak prompt
    weighs as much as a short plain one). ``scoring`` is how the router scores experts: ``softmax``, or
    ``sigmoid`` (DeepSeek-V3), whose scores are normalised to sum to 1."""
    if scoring == "softmax":
        probs = torch.softmax(logits.float(), dim=-1)
    elif scoring == "sigmoid":
        scores = torch.sigmoid(logits.float())
        probs = scores / scores.sum(-1, keepdim=True)
    else:
        raise ValueError(f"mean_routing: scoring must be 'softmax' or 'sigmoid', got {scoring!r}")
    mask = mask.to(probs.dtype).unsqueeze(-1)
    per_sample = (probs * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return per_sample.mean(0)


def routing_kl(plain: torch.Tensor, jailbreak: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RASA's routing-consistency loss: ``(1/L) Σ_l KL(q_l(plain) ‖ q_l(jailbreak))`` for ``[L, E]``
    mean routing distributions. The caller detaches ``plain`` (it is the target)."""
    p, q = plain.float(), jailbreak.float()
    return (p * (torch.log(p.clamp_min(eps)) - torch.log(q.clamp_min(eps)))).sum(-1).mean()
