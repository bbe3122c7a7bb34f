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

    Logits are always computed in float32, also under autocast and in a bf16 model: routing decisions
    are sensitive to rounding, and training and inference must route alike. The last layer starts
    near zero (std 1e-3), so a fresh gate spreads its weight almost evenly while top-k ties are broken.
    """

    def __init__(self, d_in: int, n_out: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))
        else:
            self.net = nn.Sequential(nn.Linear(d_in, n_out))
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.zeros_(self.net[-1].bias)

    @property
    def linear(self) -> nn.Linear | None:
        """The single linear layer of a linear gate (None for a two-layer gate)."""
        return self.net[0] if len(self.net) == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._logits(x)
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        first = self.net[0]
        x = x.to(first.weight.dtype)
        if len(self.net) == 1:  # skip nn.Sequential's call overhead: this runs once per layer per token
            return F.linear(x, first.weight, first.bias)
        return self.net(x)


def route_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the gate's outputs, in float32."""
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def expert_weights(probs: torch.Tensor, null_expert: bool, top_k: int | None = None) -> torch.Tensor:
    """Mixture weights ``[..., E]`` from routing probabilities ``[..., n]``.

    With ``top_k``, all but the k largest probabilities (the null expert counts as one) become 0 and
    the kept ones are *not* renormalised, as in the Switch Transformer: renormalising would make a
    top-1 weight exactly 1 and leave the gate without a gradient. The null column (the last one) is
    then dropped: its weight is the share left to the base model alone.
    """
    if top_k is not None and top_k < probs.shape[-1]:
        top = probs.topk(top_k, dim=-1).indices
        probs = probs * torch.zeros_like(probs).scatter_(-1, top, 1.0)
    return probs[..., :-1] if null_expert else probs
