"""SafeMoE: unsafe-knowledge LoRA experts behind a safety router.

Hashemzadeh, Huang, Kim, Côté, Chandar, "Dialectics of Alignment: Harnessing Unsafe Knowledge for
Dynamic Safety Routing", arXiv 2606.00686 (2026). (Not the KAIST harmful-fine-tuning defence, nor the
harmful-expert-removal repository, that share the name.)

Stage A: one LoRA expert per harm domain, SFT on that domain's (harmful prompt, unsafe response) pairs,
saved as standard PEFT adapter folders. Stage B: load the experts into the routed mixture, freeze
everything but the gates, and train the gates on (prompt, safe-and-informative response) pairs. The
result is one artifact folder (see routealign.models.artifact). Launch with ``routealign train`` or,
for several processes or GPUs, ``accelerate launch -m routealign train``; the code is the same.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from ..config import ConfigError, GateConfig, LoraConfig, ModelConfig, TrainConfig, from_dict, to_dict
from ..data import DataConfig, load_sft, split_domains
from ..data.collate import encode_all, ensure_chat_template, sft_collator
from ..io import atomic_dir, atomic_write_json, recover_dir
from ..losses import routing_regulariser
from ..models.artifact import GATES, MANIFEST, save_gates, write_manifest
from ..models.loading import load_model, load_tokenizer
from ..models.mixture import attach_mixture, read_peft_expert
from ..training import Callback, Stage, clear_checkpoint, run_stage

log = logging.getLogger(__name__)


@dataclass
class ExpertsStage:
    data: DataConfig = field(default_factory=DataConfig)
    """(harmful prompt, unsafe response) pairs with a domain per row."""
    domains: list[str] = field(default_factory=list)
    """Domains to train experts for, in this order; empty = every domain in the data, sorted."""
    min_examples: int = 1
    """A domain with fewer examples is an error (no expert is trained on next to nothing silently)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class RouterStage:
    data: DataConfig = field(default_factory=DataConfig)
    """(prompt, safe-and-informative response) pairs; only the gates learn from them."""
    gate: GateConfig = field(default_factory=GateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class SafeMoEConfig:
    recipe: str = "safemoe"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/safemoe"
    """Artifact folder (experts, gates, manifest) and training state."""
    model: ModelConfig = field(default_factory=ModelConfig)
    experts: ExpertsStage = field(default_factory=ExpertsStage)
    router: RouterStage = field(default_factory=RouterStage)

    def __post_init__(self) -> None:
        if self.recipe != "safemoe":
            raise ConfigError(f"recipe: expected 'safemoe', got {self.recipe!r}")
        if self.experts.train.precision != self.router.train.precision:
            # accelerate fixes mixed precision once per process.
            raise ConfigError("experts.train.precision and router.train.precision: must be equal")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "expert"


def expert_folders(domains: Sequence[str]) -> dict[str, str]:
    """Domain → folder under experts/, unique even when two names slug alike."""
    folders, used = {}, set()
    for d in domains:
        base = candidate = slug(d)
        n = 2
        while candidate in used:
            candidate, n = f"{base}-{n}", n + 1
        used.add(candidate)
        folders[d] = f"experts/{candidate}"
    return folders


def sft_loss(model, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def router_loss(gate: GateConfig):
    """Next-token loss on the response, plus the optional routing regulariser."""
    if not (gate.load_balance_coef or gate.entropy_coef):
        return sft_loss

    def loss_fn(model, batch: dict) -> torch.Tensor:
        mixture = _unwrap(model).routealign_mixture
        with mixture.collecting() as probs:
            loss = model(**batch).loss
        aux = routing_regulariser(probs, batch["attention_mask"], gate.load_balance_coef, gate.entropy_coef)
        return loss + aux

    return loss_fn


def _unwrap(model):
    return getattr(model, "module", model)


def train_experts(cfg: SafeMoEConfig, accelerator: Accelerator, model, tokenizer, out: Path, callbacks=()) -> list[dict]:
    """Stage A. Finished experts are skipped, so a killed run picks up where it stopped."""
    domains = split_domains(load_sft(cfg.experts.data), cfg.experts.domains or None, min_examples=cfg.experts.min_examples)
    folders = expert_folders(list(domains))
    lora = cfg.experts.lora
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.rslora,
        task_type="CAUSAL_LM",
    )
    for index, (domain, examples) in enumerate(domains.items()):
        final = out / folders[domain]
        if accelerator.is_main_process:
            recover_dir(final)
        accelerator.wait_for_everyone()
        if (final / "adapter_config.json").is_file():
            log.info("expert %r already trained: %s", domain, final)
            continue
        log.info("stage A: expert %r on %d examples", domain, len(examples))
        torch.manual_seed(cfg.experts.train.seed + index)  # each expert's init independent of the others
        peft_model = get_peft_model(model, peft_cfg)
        stage = Stage(
            name=f"expert:{domain}",
            model=peft_model,
            examples=encode_all(examples, tokenizer, cfg.experts.train.max_length),
            collate=sft_collator(tokenizer),
            cfg=cfg.experts.train,
            loss_fn=sft_loss,
            checkpoint_dir=out / "checkpoints" / folders[domain],
            log_file=out / "logs" / "train.jsonl",
            callbacks=callbacks,
        )
        run_stage(accelerator, stage)
        if accelerator.is_main_process:
            with atomic_dir(final) as tmp:
                accelerator.unwrap_model(peft_model).save_pretrained(tmp)
        accelerator.wait_for_everyone()
        clear_checkpoint(accelerator, stage)
        # unload() takes the LoRA layers out again: the same base serves the next expert and stage B.
        model = accelerator.unwrap_model(peft_model).unload()
        accelerator.free_memory()
    return [{"name": d, "path": folders[d]} for d in domains]


def train_router(cfg: SafeMoEConfig, accelerator: Accelerator, model, tokenizer, out: Path, experts: list[dict], callbacks=()):
    """Stage B: gates only, on safe-and-informative answers."""
    mixture = attach_mixture(model, [read_peft_expert(out / e["path"], e["name"]) for e in experts], cfg.router.gate)
    mixture.freeze_all_but_gates()
    examples = load_sft(cfg.router.data)
    log.info("stage B: %s gates over %d experts on %d examples", cfg.router.gate.kind, len(experts), len(examples))
    stage = Stage(
        name="router",
        model=model,
        examples=encode_all(examples, tokenizer, cfg.router.train.max_length),
        collate=sft_collator(tokenizer),
        cfg=cfg.router.train,
        loss_fn=router_loss(cfg.router.gate),
        checkpoint_dir=out / "checkpoints" / "router",
        log_file=out / "logs" / "train.jsonl",
        callbacks=callbacks,
    )
    run_stage(accelerator, stage)
    return mixture, stage


LOGGING_ONLY = ("log_every", "save_every")
"""Train fields that change how a run reports, not what it computes: a resume may change them."""


def _result_fields(cfg: SafeMoEConfig) -> dict:
    data = json.loads(json.dumps(to_dict(cfg)))
    for stage in ("experts", "router"):
        for key in LOGGING_ONLY:
            data[stage]["train"].pop(key, None)
    return data


def check_run_config(out: Path, cfg: SafeMoEConfig, accelerator: Accelerator) -> bool:
    """A folder resumes only the run it was started for: finished experts and checkpoints in it are
    reused. Returns True when that run already finished (its artifact is complete)."""
    path = out / "run_config.json"
    if path.is_file():
        if _result_fields(from_dict(SafeMoEConfig, json.loads(path.read_text()))) != _result_fields(cfg):
            raise ConfigError(
                f"{out}: holds a run with a different config ({path}); pick another output_dir or delete that folder"
            )
        if (out / MANIFEST).is_file():
            return True
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(path, to_dict(cfg))
    accelerator.wait_for_everyone()
    return False


def main(cfg: SafeMoEConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Run both stages and write the artifact; returns its folder."""
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.experts.train.precision)
    log.info(
        "process %d of %d on %s, mixed precision %s",
        accelerator.process_index + 1, accelerator.num_processes, accelerator.device, accelerator.mixed_precision,
    )
    if check_run_config(out, cfg, accelerator):  # before any loading: a finished run costs nothing
        log.info("%s already holds this run's finished artifact; nothing to train", out)
        return out
    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    model = load_model(cfg.model)
    experts = train_experts(cfg, accelerator, model, tokenizer, out, callbacks)
    mixture, stage = train_router(cfg, accelerator, model, tokenizer, out, experts, callbacks)
    if accelerator.is_main_process:
        save_gates(mixture, out / GATES)
        write_manifest(out, recipe="safemoe", config=to_dict(cfg), experts=experts, gate=cfg.router.gate, model=cfg.model)
        log.info("artifact written to %s", out)
    accelerator.wait_for_everyone()
    clear_checkpoint(accelerator, stage)
    accelerator.end_training()
    return out
