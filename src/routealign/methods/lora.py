"""LoRA experts, as SafeMoE and MidPO train them: each a fresh PEFT LoRA on the same base, trained in
its own stage, saved as a standard PEFT adapter folder, then taken off again; and the mixture artifact
both methods leave (the experts behind trained gates)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from ..config import ConfigError, GateConfig, LoraConfig, to_dict
from ..io import atomic_dir
from ..models.artifact import GATES, save_gates, write_manifest
from ..models.mixture import Mixture
from ..recipe import Run
from ..training import Stage, clear_checkpoint, run_stage

log = logging.getLogger(__name__)

ADAPTER_MARK = "adapter_config.json"
"""The file PEFT writes into every adapter folder: an expert's folder holding it is a finished expert
(folders are replaced atomically)."""


def check_targets(
    model: torch.nn.Module, targets: Sequence[str], key: str = "experts.lora.target_modules"
) -> None:
    """Each target names at least one ``nn.Linear`` (PEFT's rule: the full name or its last parts)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in linear):
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise ConfigError(
                f"{key}: {target!r} matches no linear layer of {type(model).__name__} "
                f"(its linear layers end in: {', '.join(suffixes)})"
            )


def peft_lora(lora: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.rslora,
        task_type="CAUSAL_LM",
    )


def train_lora_expert(
    accelerator: Accelerator,
    model: torch.nn.Module,
    lora: LoraConfig,
    seed: int,
    final: Path,
    make_stage: Callable[[torch.nn.Module], Stage],
) -> torch.nn.Module:
    """Put a fresh LoRA (seeded, so each expert's start is independent of the others') on ``model``,
    train it in ``make_stage(peft_model)``, save it to ``final`` as a PEFT adapter folder, and return the
    base model with the LoRA layers taken out again, ready for the next expert."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, peft_lora(lora))
    stage = make_stage(peft_model)
    run_stage(accelerator, stage)
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            accelerator.unwrap_model(peft_model).save_pretrained(tmp)
    accelerator.wait_for_everyone()
    clear_checkpoint(accelerator, stage)
    model = accelerator.unwrap_model(peft_model).unload()
    accelerator.free_memory()
    return model


def write_mixture_artifact(
    run: Run, *, mixture: Mixture, stage: Stage, experts: list[dict], gate: GateConfig
) -> None:
    """Gates, then the manifest (its presence means "complete"), then drop the router's resume state."""
    if run.accelerator.is_main_process:
        save_gates(mixture, run.out / GATES)
        write_manifest(
            run.out,
            kind="mixture",
            recipe=run.cfg.recipe,
            config=to_dict(run.cfg),
            model=run.cfg.model,
            experts=experts,
            gate=gate,
        )
        log.info("artifact written to %s", run.out)
    run.accelerator.wait_for_everyone()
    clear_checkpoint(run.accelerator, stage)
