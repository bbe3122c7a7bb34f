"""Routing traces: which experts each router picked, recorded through forward hooks.

:class:`RouterTrace` records every router call (top-k indices, optionally the logits with their graph),
e.g. during batched ``generate``; :func:`routealign.generation.routed_generate` turns a trace into
per-sample counts of how often each (layer, expert) was in the top-k (:func:`expert_counts`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .view import MoEView


class RouterTrace:
    """Forward hooks on every router of ``view``: per layer, each call's top-k indices ``[N, K]``
    (N = the tokens of that forward pass, flattened batch-major), and with ``logits=True`` the router
    logits ``[N, E]`` as computed (still attached to the graph when gradients flow)."""

    def __init__(self, view: MoEView, *, logits: bool = False):
        self.view, self.keep_logits = view, logits
        self.indices: list[list[torch.Tensor]] = [[] for _ in view.layers]
        self.logits: list[list[torch.Tensor]] = [[] for _ in view.layers]
        self._handles = []

    def __enter__(self) -> RouterTrace:
        for i, layer in enumerate(self.view.layers):
            self._handles.append(layer.router.register_forward_hook(functools.partial(self._record, i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, i: int, module, args, output) -> None:
        logits, _, indices = output
        self.indices[i].append(indices.detach())
        if self.keep_logits:
            self.logits[i].append(logits)

    def clear(self) -> None:
        for per_layer in (*self.indices, *self.logits):
            per_layer.clear()


def expert_counts(indices: torch.Tensor, mask: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``indices [B, T, K]``, ``mask [B, T]`` → ``[B, E]``: per row, how many counted positions had
    each expert in their top-k."""
    hits = F.one_hot(indices.long(), num_experts).sum(2)  # [B, T, E]
    return (hits * mask.unsqueeze(-1).to(hits.dtype)).sum(1)
