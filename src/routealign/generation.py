"""Batched chat generation with transformers' ``generate``, optionally recording the routing per token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .data.collate import left_padded_prompts
from .models.mixture import Mixture
from .models.moe import MoEView, RouterTrace, expert_counts

BASE_ROUTE = "base"
"""Name shown for the null expert (the base model alone)."""


@dataclass
class Generation:
    prompt: str | list[dict]
    text: str
    tokens: list[str]
    routes: list[str] | None = None
    """Per generated token, the expert with the largest mean gate weight across adapted layers."""
    ids: list[int] | None = None
    """The generated token ids, up to (not including) the end of the answer."""


def route_names(mixture: Mixture) -> list[str]:
    return mixture.expert_names + ([BASE_ROUTE] if mixture.gate_cfg.null_expert else [])


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int = 0,
    system: str | None = None,
    routing: bool = False,
    on_batch: Callable[[list[Generation]], None] | None = None,
) -> list[Generation]:
    """Greedy by default; with ``do_sample`` the draws are seeded. Left padding, KV cache on.

    A prompt is a user message, or a whole conversation as a list of chat messages. ``on_batch`` is
    called with each batch's generations as it finishes (progress bars).
    """
    mixture: Mixture | None = getattr(model, "routealign_mixture", None)
    routing = routing and mixture is not None and mixture.state.mode == "gate"
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        batch = left_padded_prompts(tokenizer, chunk, system, device=model.device)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if do_sample
            else {"do_sample": False}
        )
        if do_sample:
            torch.manual_seed(seed + start)
        steps: list[torch.Tensor] = []
        hook = (
            model.register_forward_hook(lambda *_, s=steps: s.append(_step_routing(mixture)))
            if routing
            else None
        )
        try:
            # A sequence gate routes this batch from its prompts inside model.generate (Mixture.route).
            with mixture.collecting() if routing else nullcontext():
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
        finally:
            if hook is not None:
                hook.remove()
        new = out[:, batch["input_ids"].shape[1] :]
        for i, prompt in enumerate(chunk):
            ids = _until_eos(new[i].tolist(), tokenizer)
            tokens = [tokenizer.decode([t]) for t in ids]
            routes = None
            if routing:
                names = route_names(mixture)
                routes = [names[int(steps[t][i].argmax())] for t in range(len(ids))]
            results.append(
                Generation(
                    prompt, tokenizer.decode(ids, skip_special_tokens=True).strip(), tokens, routes, ids
                )
            )
        if on_batch is not None:
            on_batch(results[start:])
    return results


def _step_routing(mixture: Mixture) -> torch.Tensor:
    """Mean gate probabilities ``[batch, n]`` at the last position of this forward pass, over all layers."""
    probs, mixture.state.probs = mixture.state.probs, []
    if mixture.sequence_gate is not None:  # one routing per sequence, set at the prompt
        return mixture.state.sequence.float().cpu()
    return torch.stack([p[:, -1] for p in probs]).mean(0).float().cpu()


def _until_eos(ids: list[int], tokenizer) -> list[int]:
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for n, t in enumerate(ids):
        if t in stops:
            return ids[:n]
    return ids


def render_routes(gen: Generation) -> str:
    """Text with ``[expert]`` marks where the routed expert changes."""
    if not gen.routes:
        return gen.text
    parts, current = [], None
    for token, route in zip(gen.tokens, gen.routes, strict=True):
        if route != current:
            parts.append(f"[{route}]")
            current = route
        parts.append(token)
    return "".join(parts).strip()


# --------------------------------------------------------------------------------------------------
# Generation that counts the experts a native MoE routes each answer through (RASA's stage 1)


@dataclass
class RoutedGeneration:
    prompt: str | list[dict]
    text: str
    counts: torch.Tensor
    """``[layers, experts]`` int: counted positions with that expert in the layer's top-k."""
    positions: int
    """Positions counted (generated tokens, plus prompt tokens when asked)."""
    ids: list[int]
    """The answer's token ids (up to, not including, EOS)."""


def routed_generate(model, tokenizer, prompts: Sequence, view: MoEView, *, prompt_tokens: bool = False,
                    batch_size: int = 8, **generate_kwargs) -> list[RoutedGeneration]:  # fmt: skip
    """Batched generation (:func:`generate`) with each answer's expert counts.

    A generated token counts at the forward pass that reads it (its own routing), up to the end of the
    answer: EOS and the padding after it are not counted, nor is the last token (never read back).
    With ``prompt_tokens`` the prompt's non-padding positions count too.
    """
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        with RouterTrace(view) as trace:
            gens = generate(model, tokenizer, chunk, batch_size=len(chunk), **generate_kwargs)
        prompt_mask = left_padded_prompts(tokenizer, chunk, generate_kwargs.get("system"))["attention_mask"]
        rows, width = prompt_mask.shape
        answered = torch.tensor([len(g.ids) for g in gens])
        counts = []
        for calls in trace.indices:
            first, steps = calls[0], calls[1:]
            if first.shape[0] != rows * width or any(s.shape[0] != rows for s in steps):
                raise RuntimeError(
                    f"router calls of {[c.shape[0] for c in calls[:3]]} tokens do not match a batch of {rows}×{width}"
                )
            k = first.shape[-1]
            per_position = torch.cat(
                [first.view(rows, width, k), *(s.view(rows, 1, k) for s in steps)], 1
            ).cpu()
            generated = torch.arange(len(steps)).unsqueeze(0) < answered.unsqueeze(1)  # [B, steps]
            mask = torch.cat([prompt_mask.cpu().bool() & prompt_tokens, generated], 1)
            counts.append(expert_counts(per_position, mask, view.num_experts))
        counts = torch.stack(counts, 1)  # [B, L, E]
        positions = answered.clamp(max=len(trace.indices[0]) - 1) + (
            prompt_mask.sum(1).cpu() if prompt_tokens else 0
        )
        results += [
            RoutedGeneration(g.prompt, g.text, counts[i], int(positions[i]), g.ids)
            for i, g in enumerate(gens)
        ]
    return results
