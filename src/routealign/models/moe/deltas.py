"""Trainable deltas for chosen experts of a fused MoE layer.

:class:`ExpertDelta` trains chosen experts' slices of the fused tensors as separate small parameters
(``W[e] + Δ[j]``), so optimiser state, weight decay and checkpoints cover only the chosen experts;
every other expert, the routers and the rest of the model keep their exact weights. PEFT's LoRA wraps
``nn.Linear`` modules and cannot address one slice of a fused 3-D expert tensor, which is why this is
written here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .view import MoEView


class ExpertDelta(nn.Module):
    """Additive deltas for some experts of one fused experts module: expert ``e = chosen[j]`` computes
    with ``gate_up_proj[e] + Δ_gate_up[j]`` and ``down_proj[e] + Δ_down[j]``. The deltas start at zero,
    so attaching them changes nothing until they train. They are float32 whatever the model's dtype
    (like PEFT's adapters): an update far smaller than a bf16 weight's rounding step still lands."""

    def __init__(self, experts: nn.Module, chosen: Sequence[int]):
        super().__init__()
        gate_up, down = experts.gate_up_proj, experts.down_proj
        self.register_buffer(
            "chosen", torch.tensor(sorted(set(chosen)), dtype=torch.long, device=gate_up.device)
        )
        k = len(self.chosen)
        self.gate_up_proj = nn.Parameter(gate_up.new_zeros((k, *gate_up.shape[1:]), dtype=torch.float32))
        self.down_proj = nn.Parameter(down.new_zeros((k, *down.shape[1:]), dtype=torch.float32))
        self._call: tuple | None = None

    def contribution(
        self, experts: nn.Module, hidden: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The chosen experts' weighted outputs for the tokens routed to them (the same maths as
        transformers' eager experts loop, through the module's own gate function)."""
        out = torch.zeros_like(hidden)
        unused = []
        for j, e in enumerate(self.chosen.tolist()):
            rows, slot = torch.where(indices == e)
            if rows.numel() == 0:
                unused.append(j)
                continue
            # x(W + Δ)ᵀ as xWᵀ + xΔᵀ: autograd then keeps the routed tokens' activations for Δ's gradient,
            # not a (W + Δ) copy per chosen expert, so memory follows the tokens, not the weights.
            x = hidden[rows]
            h = experts._apply_gate(
                F.linear(x, experts.gate_up_proj[e]) + F.linear(x, self.gate_up_proj[j].to(x.dtype))
            )
            h = F.linear(h, experts.down_proj[e]) + F.linear(h, self.down_proj[j].to(h.dtype))
            out = out.index_add(0, rows, (h * weights[rows, slot, None]).to(out.dtype))
        if unused:
            # Keep every delta in the graph (a zero gradient), so data-parallel gradient reduction sees
            # the same parameters on every process whichever experts this batch happened to reach.
            idx = torch.tensor(unused, device=out.device)
            out = out + 0.0 * (self.gate_up_proj[idx].sum() + self.down_proj[idx].sum())
        return out


EXPERT_ARGS = ("hidden_states", "top_k_index", "top_k_weights")


def _expert_args(args: tuple, kwargs: dict) -> list:
    return [args[i] if i < len(args) else kwargs[name] for i, name in enumerate(EXPERT_ARGS)]


def _before_experts(delta: ExpertDelta, module, args, kwargs):
    """The fused module computes every expert but the chosen ones (their weights set to 0 here); the
    hook after it adds the chosen experts computed with their deltas."""
    hidden, indices, weights = _expert_args(args, kwargs)
    delta._call = (hidden, indices, weights)
    kept = weights.masked_fill(torch.isin(indices, delta.chosen), 0)
    if len(args) >= 3:
        return (*args[:2], kept, *args[3:]), kwargs
    return args, {**kwargs, "top_k_weights": kept}


def _after_experts(delta: ExpertDelta, module, args, kwargs, output):
    hidden, indices, weights = delta._call
    delta._call = None
    return output + delta.contribution(module, hidden, indices, weights).to(output.dtype)


DELTA_NAME = "routealign_delta"
"""Attribute under which an experts module holds its :class:`ExpertDelta` (so its parameters are
named ``...experts.routealign_delta.gate_up_proj`` in the model's state dict)."""


@contextmanager
def expert_deltas(view: MoEView, chosen: Mapping[int, Sequence[int]]) -> Iterator[list[ExpertDelta]]:
    """Attach an :class:`ExpertDelta` to each MoE layer with chosen experts (``chosen``: position in
    ``view.layers`` → expert ids) while the block runs; every other weight keeps ``requires_grad`` as
    it was. Leaving the block detaches them (merge first with :func:`merge_deltas` to keep them)."""
    attached, handles = [], []
    try:
        for i, experts_ids in sorted(chosen.items()):
            if not experts_ids:
                continue
            experts = view.layers[i].experts
            bad = [e for e in experts_ids if not 0 <= e < view.num_experts]
            if bad:
                raise ValueError(
                    f"layer {view.layers[i].index}: experts {bad} out of range 0..{view.num_experts - 1}"
                )
            delta = ExpertDelta(experts, experts_ids)
            experts.add_module(DELTA_NAME, delta)
            handles.append(
                experts.register_forward_pre_hook(functools.partial(_before_experts, delta), with_kwargs=True)
            )
            handles.append(
                experts.register_forward_hook(functools.partial(_after_experts, delta), with_kwargs=True)
            )
            attached.append(delta)
        yield attached
    finally:
        for handle in handles:
            handle.remove()
        for layer in view.layers:
            if DELTA_NAME in layer.experts._modules:
                del layer.experts._modules[DELTA_NAME]


@torch.no_grad()
def merge_deltas(view: MoEView) -> int:
    """Add each attached delta into its fused tensors in place and zero it (the model then computes
    the same with or without the hooks). Returns the number of expert slices changed."""
    merged = 0
    for layer in view.layers:
        delta = layer.experts._modules.get(DELTA_NAME)
        if delta is None:
            continue
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(layer.experts, name)
            weight.index_copy_(0, delta.chosen, _added_rows(weight, delta.chosen, getattr(delta, name)))
        delta.gate_up_proj.zero_()
        delta.down_proj.zero_()
        merged += len(delta.chosen)
    return merged


def merged_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict (e.g. gathered from FSDP) with every delta added into its fused tensors and
    the delta entries dropped: what ``save_pretrained`` should write."""
    out = {k: v for k, v in state.items() if f".{DELTA_NAME}." not in k}
    for key, value in state.items():
        if f".{DELTA_NAME}." not in key or key.endswith(".chosen"):
            continue
        prefix, name = key.split(f".{DELTA_NAME}.")
        base = f"{prefix}.{name}"
        chosen = state[f"{prefix}.{DELTA_NAME}.chosen"].long().to(out[base].device)
        out[base] = out[base].index_copy(0, chosen, _added_rows(out[base], chosen, value))
    return out


def _added_rows(weight: torch.Tensor, chosen: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rows ``chosen`` of ``weight`` plus ``delta``, summed in float32 and rounded once to its dtype."""
    return (weight[chosen].float() + delta.to(weight.device).float()).to(weight.dtype)
