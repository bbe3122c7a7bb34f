"""Gates: small heads that turn a hidden state into mixture weights over experts.

Neither PEFT nor transformers has a trainable per-token mixing gate over LoRA experts that leaves the
KV cache alone (PEFT's X-LoRA computes its scalings with a second forward pass), so these are ours.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GateHead(nn.Module):
    """``d_in → n_out`` logits: one linear layer, or two with a SiLU between (``hidden > 0``).

    The last layer starts at zero, so a fresh gate spreads its weight evenly over its outputs and every
    run starts from the same mixture whatever the seed.
    """

    def __init__(self, d_in: int, n_out: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))
        else:
            self.net = nn.Sequential(nn.Linear(d_in, n_out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    @property
    def linear(self) -> nn.Linear | None:
        """The single linear layer of a linear gate (None for a two-layer gate)."""
        return self.net[0] if len(self.net) == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.net[0]
        x = x.to(first.weight.dtype)
        if len(self.net) == 1:  # skip nn.Sequential's call overhead: this runs once per layer per token
            return F.linear(x, first.weight, first.bias)
        return self.net(x)


def mixture_probs(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Softmax over the last dim; with ``top_k``, keep the k largest and renormalise them to sum to 1."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    if top_k is not None and top_k < probs.shape[-1]:
        top = probs.topk(top_k, dim=-1).indices
        keep = torch.zeros_like(probs).scatter_(-1, top, 1.0)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def expert_weights(probs: torch.Tensor, null_expert: bool) -> torch.Tensor:
    """Drop the null column (the last one): its weight is the share left to the base model alone."""
    return probs[..., :-1] if null_expert else probs
