"""Teacher-forced measurements on (prompt, response) pairs: response loss, and where the gates route.

Cheap, deterministic numbers that need no judge: how likely a model finds reference answers, and which
experts a mixture sends each domain's tokens to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from .data.collate import IGNORE, encode_sft, sft_collator
from .data.records import SFTExample
from .generation import route_names


def _batches(tokenizer, examples: Sequence[SFTExample], batch_size: int, max_length: int, device):
    """Yield (examples, batch) pairs; examples with no room for a response are skipped."""
    pairs = [(e, enc) for e in examples if (enc := encode_sft(e, tokenizer, max_length)) is not None]
    collate = sft_collator(tokenizer)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate([enc for _, enc in chunk])
        yield [e for e, _ in chunk], {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def response_nll(
    model, tokenizer, examples: Sequence[SFTExample], *, batch_size: int = 8, max_length: int = 512
) -> float:
    """Mean negative log-likelihood per response token (prompt tokens excluded), over all examples."""
    total, count = 0.0, 0
    for _, batch in _batches(tokenizer, examples, batch_size, max_length, model.device):
        # labels too: a sequence gate must pool the prompt only, as in training and generation.
        logits = model(**batch).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        total += loss.item()
        count += int((labels != IGNORE).sum())
    return total / max(count, 1)


@torch.no_grad()
def routing_by_domain(
    model, tokenizer, examples: Sequence[SFTExample], *, batch_size: int = 8, max_length: int = 512
) -> dict[str, dict[str, float]]:
    """Per domain, the mean gate probability of each route (experts, then ``base``) over response
    tokens and all adapted layers; for a sequence gate, over the domain's prompts."""
    mixture = model.routealign_mixture
    names = route_names(mixture)
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(len(names)))
    counts: dict[str, float] = defaultdict(float)
    for chunk, batch in _batches(tokenizer, examples, batch_size, max_length, model.device):
        with mixture.collecting() as probs:
            model(**batch)
        if mixture.sequence_gate is not None:
            per_row = probs[0].float().cpu()
            weights = torch.ones(per_row.shape[0])
        else:
            mask = (batch["labels"] != IGNORE).float()  # response tokens
            mean_layers = torch.stack(probs).float().mean(0)  # [batch, seq, n]
            per_row = ((mean_layers * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)).cpu()
            weights = mask.sum(1).cpu()
        for i, example in enumerate(chunk):
            domain = example.domain or "(none)"
            sums[domain] += per_row[i] * weights[i]
            counts[domain] += float(weights[i])
    return {
        d: {n: float(v) for n, v in zip(names, sums[d] / max(counts[d], 1e-9), strict=True)}
        for d in sorted(sums)
    }
