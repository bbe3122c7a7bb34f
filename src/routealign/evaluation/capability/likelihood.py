"""Log-likelihood of continuations after contexts, the scorer of MMLU and TruthfulQA.

The log-likelihood scorer is written here rather than borrowed from lm-eval so that the three sets run
offline, on PEFT and routed models, without that dependency.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from routealign.data.collate import IGNORE


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (a BOS for Llama, none for GPT-2)."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a")["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def encode_pair(
    tokenizer, context: str, continuation: str, prefix: list[int] | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as it follows the context.

    The whole text is tokenized once and the continuation is what follows the context's own tokens, so
    it is split as the model would see it in running text (lm-eval's rule). Where the tokenizer merges
    across the boundary (the whole text does not start with the context's tokens), the two halves are
    tokenized apart and concatenated instead: the context then keeps its own tokens and the continuation
    is scored in full. Spaces are not moved: put the separating space in the continuation (``" A"``).
    The tokenizer's leading special tokens (``prefix``; found once when not given) start the context,
    unless the context is already a rendered chat that opens with the BOS text. An empty context falls
    back to the EOS token, so that the first continuation token has something to be predicted from.
    """
    if prefix is None:
        prefix = _prefix_ids(tokenizer)
    bos = tokenizer.bos_token
    if bos and context.startswith(bos):
        prefix = []
    ctx = _encode(tokenizer, context) if context else []
    whole = _encode(tokenizer, context + continuation)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        cont = whole[len(ctx) :]
    else:
        cont = _encode(tokenizer, continuation)
    if not cont:
        raise ValueError(f"empty continuation after context {context[-40:]!r}")
    ctx = prefix + ctx
    if not ctx:
        ctx = [tokenizer.eos_token_id]
    return ctx, cont


@torch.no_grad()
def loglikelihood(
    model,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    *,
    max_length: int | None = None,
) -> list[float]:
    """``sum log p(continuation | context)`` over the continuation tokens, for each (context, continuation).

    The model reads ``(context + continuation)[:-1]``: the last token is only ever predicted. Requests
    that need the same input (MMLU's four one-token letters after one prompt) share one forward pass.
    Right-padded batches, longest first (less padding); the result is in the order of ``requests``.
    A sequence longer than ``max_length`` (default: the model's ``max_position_embeddings``) loses
    context tokens from the left. Routed models get ``labels`` masking the context, so that a sequence
    gate routes on the context alone, as it does at generation time.
    """
    prefix = _prefix_ids(tokenizer)
    pairs = [encode_pair(tokenizer, c, x, prefix) for c, x in requests]
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    if limit:
        pairs = [_fit(ctx, cont, limit) for ctx, cont in pairs]
    groups: dict[tuple[tuple[int, ...], int], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(pairs):
        groups[tuple(ctx + cont[:-1]), len(ctx)].append(i)
    inputs = sorted(groups, key=lambda key: -len(key[0]))
    routed = getattr(model, "routealign_mixture", None) is not None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [0.0] * len(pairs)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        width = max(len(seq) for seq, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for row, (seq, n_ctx) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, n_ctx : len(seq)] = ids[row, n_ctx : len(seq)]
        batch = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
        if routed:
            batch["labels"] = labels.to(model.device)
        logits = model(**batch).logits
        for row, key in enumerate(chunk):
            n_ctx = key[1]
            for i in groups[key]:
                cont = pairs[i][1]
                # position t predicts token t + 1: the continuation is predicted from n_ctx - 1 on.
                logp = logits[row, n_ctx - 1 : n_ctx - 1 + len(cont)].float().log_softmax(-1)
                target = torch.tensor(cont, device=logp.device)
                scores[i] = float(logp.gather(-1, target[:, None]).sum())
    return scores


def _fit(ctx: list[int], cont: list[int], limit: int) -> tuple[list[int], list[int]]:
    if len(cont) >= limit:
        raise ValueError(
            f"a continuation of {len(cont)} tokens leaves no room for context within {limit} tokens"
        )
    over = len(ctx) + len(cont) - limit
    return (ctx[over:], cont) if over > 0 else (ctx, cont)
