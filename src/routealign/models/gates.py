"""Gates: small heads that turn a hidden state into mixture weights over experts.

Neither PEFT nor transformers has a trainable per-token mixing gate over LoRA experts that leaves the
KV cache alone (PEFT's X-LoRA computes its scalings with a second forward pass), so these are ours.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class GateHead(nn.Module):
    """``d_in → n_out`` logits: one linear layer, or two with a SiLU between (``hidden > 0``).

    Logits are always computed in float32, also under autocast and in a bf16 model: routing decisions
    are sensitive to rounding, and training and inference must route alike. The last layer's weights
    start near zero (std 1e-3), so the initial routing hardly depends on the input: with ``init_null``
    the last output (the null expert) starts with that probability and the others share the rest
    evenly, else all start (almost) equal. Initial values come from ``generator`` when given, so a gate
    is the same however much of the global random stream earlier work used (an exact resume needs it).
    """

    def __init__(
        self,
        d_in: int,
        n_out: int,
        hidden: int = 0,
        *,
        init_null: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))
            first = self.net[0]
            bound = 1 / math.sqrt(d_in)  # nn.Linear's own default initialisation, from our generator
            nn.init.uniform_(first.weight, -bound, bound, generator=generator)
            nn.init.uniform_(first.bias, -bound, bound, generator=generator)
        else:
            self.net = nn.Sequential(nn.Linear(d_in, n_out))
        nn.init.normal_(self.net[-1].weight, std=1e-3, generator=generator)
        nn.init.zeros_(self.net[-1].bias)
        if init_null is not None:
            with torch.no_grad():
                self.net[-1].bias[-1] = null_bias(init_null, n_out)

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


def route_probs(logits: torch.Tensor, mapping: str = "softmax") -> torch.Tensor:
    """The gate's outputs in float32: a softmax over them, or (``sigmoid``) each squashed on its own."""
    if mapping == "sigmoid":
        return torch.sigmoid(logits.float())
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


def null_bias(p_null: float, n_out: int) -> float:
    """The null logit ``b`` that gives it probability ``p_null`` against ``n_out - 1`` zero logits:
    ``e^b / (e^b + n_out - 1) = p_null``, so ``b = log(p_null · (n_out - 1) / (1 - p_null))``."""
    if n_out < 2:
        return 0.0
    return math.log(p_null * (n_out - 1) / (1.0 - p_null))


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, how: str = "rms") -> torch.Tensor:
    """Mean of ``hidden [batch, seq, d]`` over the positions where ``mask [batch, seq]`` is true.

    ``rms`` first scales each position to unit root-mean-square, so that a few positions with
    activations hundreds of times larger than the rest (the BOS token and other attention sinks in
    most LLMs) do not decide the mean; ``mean`` averages the raw vectors. A row with no position
    pools to zeros.
    """
    if how == "rms":
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)
    elif how != "mean":
        raise ValueError(f"pool: {how!r} is not 'rms' or 'mean'")
    keep = mask.bool().unsqueeze(-1)
    # where(), not a product with the mask: a NaN or inf at a padded position must not reach the mean.
    total = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
    return total / keep.sum(1).clamp_min(1).to(hidden.dtype)
