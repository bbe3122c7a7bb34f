"""RASA stages 2 and 3, alternated for ``rounds`` rounds: repair (SFT of the chosen experts' deltas on
jailbreak → refusal, routing fixed) and routing consistency (only the routers, KL of the plain request's
mean routing to the jailbreak's). What they trained so far is one state file, so a killed run resumes
after its last finished stage."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from ...config import ConfigError
from ...data.collate import encode_all, prompt_ids, sft_collator
from ...data.records import SFTExample
from ...io import remove_stale_temps, save_safetensors
from ...losses import mean_routing, routing_kl
from ...models.moe import MoEView, RouterTrace, moe_view
from ...recipe import Run
from ...training import clear_checkpoint, run_stage
from .config import RASAConfig
from .pairs import Pair
from .state import load_state_file

log = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)


def repair_examples(cfg: RASAConfig, tokenizer, pairs: Sequence[Pair]) -> list[dict]:
    examples = [
        SFTExample(p.jailbreak, p.target, system=cfg.pairs.system, source=f"pair {i} ({p.attack})")
        for i, p in enumerate(pairs)
    ]
    return encode_all(examples, tokenizer, cfg.repair.train.max_length)


def routing_examples(cfg: RASAConfig, tokenizer, pairs: Sequence[Pair]) -> list[dict]:
    limit = cfg.routing.train.max_length
    return [{"plain": prompt_ids(tokenizer, p.plain, cfg.pairs.system)[-limit:],
             "jailbreak": prompt_ids(tokenizer, p.jailbreak, cfg.pairs.system)[-limit:]} for p in pairs]  # fmt: skip


def routing_collator(tokenizer):
    """Each side right-padded on its own: ``{side}_input_ids`` and ``{side}_attention_mask``."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for side in ("plain", "jailbreak"):
            padded = tokenizer.pad(
                [{"input_ids": r[side]} for r in rows],
                padding=True,
                padding_side="right",
                return_tensors="pt",
            )
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = (
                padded["input_ids"],
                padded["attention_mask"],
            )
        return batch

    return collate


def layer_routing(
    view: MoEView, model, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[L, E]``: each MoE layer's mean routing distribution over these prompts (losses.mean_routing)."""
    with RouterTrace(view, logits=True) as trace:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
    rows, width = input_ids.shape
    scoring = view.family.scoring
    return torch.stack(
        [
            mean_routing(torch.cat(calls).view(rows, width, -1), attention_mask, scoring)
            for calls in trace.logits
        ]
    )


def routing_loss(view: MoEView, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 3's loss; ``view`` (of the model being trained) is bound once, not found at every step."""
    with torch.no_grad():
        plain = layer_routing(view, model, batch["plain_input_ids"], batch["plain_attention_mask"])
    jailbreak = layer_routing(view, model, batch["jailbreak_input_ids"], batch["jailbreak_attention_mask"])
    loss = routing_kl(plain, jailbreak)
    return loss, {"routing/kl": float(loss.detach())}


def sft_loss(model, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def set_trainable(model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)


STATE_FILE = "trained.safetensors"
"""Under ``state/``: what the stages trained so far, with the list of finished stages in its header
(one file, replaced atomically, so the weights and the list always agree)."""


def _changing(model: torch.nn.Module, cfg: RASAConfig) -> dict[str, torch.Tensor]:
    """What any stage of this run trains (deltas and routers; everything in full mode): the state a
    resumed run needs to pick up after a finished stage."""
    view = moe_view(model)
    routers = {id(p) for p in view.router_parameters()}
    return {
        n: p
        for n, p in model.named_parameters()
        if cfg.repair.mode == "full" or id(p) in routers or ".routealign_delta." in n
    }


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every process calls it), or the tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _save_progress(accelerator: Accelerator, model, cfg: RASAConfig, out: Path, done: list[str]) -> None:
    state = {n: _full(p.detach()).cpu().contiguous() for n, p in _changing(model, cfg).items()}
    if accelerator.is_main_process:
        remove_stale_temps(
            out / "state" / STATE_FILE
        )  # a killed save's temporary (the run's lock makes us its one writer)
        save_safetensors(
            out / "state" / STATE_FILE, state, metadata={"done": json.dumps(done)}, checksum=True
        )
    accelerator.wait_for_everyone()


def _load_progress(model, cfg: RASAConfig, out: Path) -> list[str]:
    path = out / "state" / STATE_FILE
    if not path.is_file():
        return []
    weights, header = load_state_file(path)
    done = json.loads(header.get("done", "[]"))
    named = _changing(model, cfg)
    if set(weights) != set(named):
        raise ConfigError(
            f"{path}: saved state does not match this run's trainable parameters; delete it to start over"
        )
    with torch.no_grad():
        for name, value in weights.items():
            named[name].copy_(value)
    log.info("resuming after %s", ", ".join(done))
    return done


def _master_weights(params: Sequence[torch.nn.Parameter]) -> dict[int, torch.dtype]:
    """Float32 master copies for the half-precision parameters a stage trains (autocast computes in
    half precision either way); returns their original dtypes, for saving."""
    original = {}
    for p in params:
        if p.dtype in HALF and id(p) not in original:
            original[id(p)] = p.dtype
            p.data = p.data.float()
    return original


def train_rounds(run: Run, pairs: list[Pair]) -> dict[str, torch.dtype]:
    """Alternate stage 2 and stage 3 ``cfg.rounds`` times on the prepared model (deltas attached).
    Returns the original dtype of every parameter given float32 master weights, by name."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    model, tokenizer = run.prepared.model, run.prepared.tokenizer
    view = moe_view(model)
    repair_data = repair_examples(cfg, tokenizer, pairs)
    routing_data = routing_examples(cfg, tokenizer, pairs)
    trained = list(model.parameters()) if cfg.repair.enabled and cfg.repair.mode == "full" else []
    trained += view.router_parameters() if cfg.routing.enabled else []
    original = _master_weights(trained)  # before the first prepare: FSDP2 shards what it is given
    done = _load_progress(model, cfg, out)
    for r in range(1, cfg.rounds + 1):
        stages = []
        if cfg.repair.enabled:
            deltas = [p for n, p in model.named_parameters() if ".routealign_delta." in n]
            stages.append(("repair", list(model.parameters()) if cfg.repair.mode == "full" else deltas,
                           repair_data, sft_collator(tokenizer), cfg.repair.train, sft_loss))  # fmt: skip
        if cfg.routing.enabled:
            stages.append(("routing", view.router_parameters(), routing_data, routing_collator(tokenizer), cfg.routing.train,
                           partial(routing_loss, view)))  # fmt: skip
        for name, params, examples, collate, train_cfg, loss_fn in stages:
            key = f"round{r}/{name}"
            if key in done:
                continue
            set_trainable(model, params)
            stage = run.training_stage(key, f"round{r}-{name}", model, examples, collate, train_cfg, loss_fn)
            run_stage(accelerator, stage)
            done.append(key)
            _save_progress(accelerator, accelerator.unwrap_model(model), cfg, out, done)
            clear_checkpoint(accelerator, stage)
            accelerator.free_memory()
    model.requires_grad_(False)
    return {n: original[id(p)] for n, p in model.named_parameters() if id(p) in original}
