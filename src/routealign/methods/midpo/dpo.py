"""Preference training blocks: both sides' log-probabilities in one forward pass, the reference model
as the same weights with the adapters switched off, and reference log-probabilities computed once and
cached on disk.

The reference is the policy's own base with its adapters disabled, as TRL does for PEFT models, so one
copy of the weights serves both. Reference log-probabilities can instead be computed before training
(:func:`precompute_reference`) and cached under a key made of the model's fingerprint and the exact
token ids and loss masks of every pair and how the model runs (mixed precision, device type), so a
later epoch or a re-run reuses them, and any change to the data, the tokenizer, the chat template,
``max_length``, the weights or the precision gives a new key rather than a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...io import DamagedFileError, cache_dir, load_safetensors, save_safetensors
from ...losses import preference_margin, sequence_logps, spe_dpo_loss

log = logging.getLogger(__name__)

SIDES = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
"""The fields of an encoded pair (data.collate.encode_pair) that its log-probabilities depend on."""
REFERENCE_FORMAT = 1
"""Bumped when the way reference log-probabilities are computed changes, so old cache entries miss."""


def pair_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs ``[B]`` of the chosen and the rejected sides of a pair batch
    (data.collate.pair_collator: the B chosen rows first, then the B rejected ones)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logps(logits, batch["labels"])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


@contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """The base model: a PEFT model's adapters disabled, or a routealign mixture's experts switched off."""
    inner = getattr(model, "module", model)  # under DDP
    if hasattr(inner, "disable_adapter"):
        with inner.disable_adapter():
            yield
    elif getattr(inner, "routealign_mixture", None) is not None:
        with inner.routealign_mixture.mode("base"):
            yield
    else:
        raise TypeError(
            f"{type(inner).__name__} has no adapters to switch off, so it cannot be its own reference; "
            "precompute the reference log-probabilities on the base model instead"
        )


def reference_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's precomputed reference log-probs when it carries them, else the base model's now, in
    eval mode (no dropout), as :func:`precompute_reference` computes them."""
    if "ref_chosen" in batch:
        return batch["ref_chosen"], batch["ref_rejected"]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapters_off(model):
            return pair_logps(model, batch)
    finally:
        model.train(was_training)


def dpo_loss(beta: float, margin: str | None = None, margin_scale: float = 1.0) -> Callable:
    """A training-loop loss: SPE-DPO on a pair batch, with its metrics.

    ``margin``: None = plain DPO; ``"better"`` / ``"worse"`` = the batch's ``chosen_score`` and
    ``rejected_score`` are rewards (higher is better) / costs (higher is worse), and
    ``margin_scale · max(0, g(y_w) − g(y_l))`` is subtracted from the DPO logit.
    """

    def loss_fn(model: torch.nn.Module, batch: dict):
        policy_chosen, policy_rejected = pair_logps(model, batch)
        ref_chosen, ref_rejected = reference_logps(model, batch)
        gap = None
        if margin is not None:
            gap = margin_scale * preference_margin(batch["chosen_score"], batch["rejected_score"], margin)
        out = spe_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, margin=gap)
        metrics = out.metrics()
        if gap is not None:
            metrics["margin"] = gap.mean().item()
        return out.loss, metrics

    return loss_fn


# --------------------------------------------------------------------------------------------------
# Reference log-probabilities, computed once


def reference_key(model_digest: str, examples: Sequence[dict], how: str = "") -> str:
    """SHA-256 of the model's fingerprint, how it runs (``how``: e.g. mixed precision and device type,
    which change the numbers) and every pair's token ids and loss masks, in order."""
    h = hashlib.sha256(
        f"routealign reference log-probs v{REFERENCE_FORMAT}\n{model_digest}\n{how}\n".encode()
    )
    for example in examples:
        h.update(json.dumps([example[k] for k in SIDES]).encode())
        h.update(b"\n")
    return h.hexdigest()


def reference_cache_path(key: str) -> Path:
    return cache_dir() / "reference-logps" / f"{key}.safetensors"


def precompute_reference(
    model: torch.nn.Module,
    examples: Sequence[dict],
    collate: Callable,
    *,
    path: Path,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast=nullcontext,
    state=None,
) -> list[dict]:
    """``examples`` with ``ref_chosen`` / ``ref_rejected`` added, read from ``path`` when it holds them
    (see :func:`reference_key`), else computed with ``model`` (the base, without adapters) and saved
    there atomically. ``autocast``: the training run's mixed-precision context, so cached and live
    reference log-probs are computed alike. ``state`` (accelerate's ``Accelerator`` or
    ``PartialState``): with several processes each computes its share of the pairs and all of them
    get the whole result (the main process writes the file), so no process waits idle on another."""
    from ...distributed import map_shards, on_main

    def cached() -> dict[str, torch.Tensor] | None:
        return _read_cached(path, len(examples))

    tensors = on_main(state, cached) if state is not None else cached()  # read on main: one branch for all
    if tensors is not None:
        log.info("reference log-probs of %d pairs read from %s", len(examples), path)
    else:

        def compute(part: list[dict]) -> list[tuple[float, float]]:
            chosen, rejected = _compute(model, part, collate, batch_size, device, autocast)
            return list(zip(chosen.tolist(), rejected.tolist(), strict=True))

        pairs = map_shards(state, list(examples), compute)
        tensors = {
            "chosen": torch.tensor([c for c, _ in pairs]),
            "rejected": torch.tensor([r for _, r in pairs]),
        }
        if state is None or state.is_main_process:
            save_safetensors(path, tensors, metadata={"pairs": str(len(examples)), "format": str(REFERENCE_FORMAT)},
                             checksum=True)  # fmt: skip
            log.info("reference log-probs of %d pairs cached in %s", len(examples), path)
    chosen, rejected = tensors["chosen"].tolist(), tensors["rejected"].tolist()
    return [dict(e, ref_chosen=c, ref_rejected=r) for e, c, r in zip(examples, chosen, rejected, strict=True)]


def _read_cached(path: Path, pairs: int) -> dict[str, torch.Tensor] | None:
    """The cached reference log-probs at ``path``, or None when there are none to use. A damaged entry (one
    that cannot be read, or whose tensors fail the checksum in its header) is named, deleted and recomputed:
    a flipped bit would otherwise change every loss it enters without a sign."""
    if not path.is_file():
        return None
    try:
        tensors, _ = load_safetensors(path, checksum="required")
        if set(tensors) != {"chosen", "rejected"} or any(t.shape != (pairs,) for t in tensors.values()):
            raise DamagedFileError(
                f"{path}: holds {', '.join(f'{k} {tuple(t.shape)}' for k, t in tensors.items())}, "
                f"not the log-probs of {pairs} pairs"
            )
    except DamagedFileError as e:
        log.warning("%s; deleting it and computing the reference log-probs again", e)
        path.unlink(missing_ok=True)
        return None
    return tensors


def _compute(model, examples, collate, batch_size, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    chosen, rejected = [torch.zeros(0)], [torch.zeros(0)]
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc="reference log-probs", leave=False):
            batch = collate(examples[start : start + batch_size])
            batch = {k: v.to(device) if device is not None else v for k, v in batch.items()}
            with torch.no_grad(), autocast():
                c, r = pair_logps(model, batch)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)
