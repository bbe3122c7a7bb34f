"""What every recipe does the same way: check LoRA targets, build PEFT's LoRA config, and own its run
folder (resume the run it was started for, refuse a different one, skip a finished one)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from ..config import ConfigError, GateConfig, LoraConfig, from_dict, to_dict
from ..distributed import claimed, on_main
from ..io import atomic_dir, atomic_write_json, json_object_with, recover_dir, refuse_foreign
from ..models.artifact import GATES, MANIFEST, save_gates, write_manifest
from ..models.mixture import Mixture
from ..training import Stage, clear_checkpoint, run_stage

P = TypeVar("P")

log = logging.getLogger(__name__)

LOGGING_ONLY = ("log_every", "save_every")
"""Train fields that change how a run reports, not what it computes: a resume may change them."""


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


def _result_fields(cfg) -> dict:
    """The config without the fields a resume may change (every stage's ``train`` logging fields)."""
    data = json.loads(json.dumps(to_dict(cfg)))
    for block in data.values():
        if isinstance(block, dict) and isinstance(block.get("train"), dict):
            for key in LOGGING_ONLY:
                block["train"].pop(key, None)
    return data


def is_run_folder(folder: Path) -> bool:
    """A training run's folder from before its lock recorded the holder: its ``run_config.json`` names a
    recipe, or RASA's record of stage 0 is there (a new run folder may be given that result to reuse)."""
    return json_object_with(folder / "run_config.json", "recipe") or json_object_with(
        folder / "pairs_config.json", "model", "pairs", "prompt_tokens"
    )


def finished_or_refused(out: Path, cfg) -> bool:
    """A folder resumes only the run it was started for: finished experts and checkpoints in it are
    reused, a different config is refused while there is any of them. A run that failed before it
    trained anything (its first step ran out of memory, say) leaves nothing to resume: the corrected
    config takes the folder over. True when this run already finished (its artifact is complete).
    Reads only; the recipe writes, once it holds the folder."""
    path = out / "run_config.json"
    if not path.is_file():
        return False
    if _result_fields(from_dict(type(cfg), json.loads(path.read_text()))) != _result_fields(cfg):
        if trained_anything(out):
            raise ConfigError(
                f"{out}: holds a run with a different config ({path}); pick another output_dir or delete that folder"
            )
        log.info("%s: the run recorded there trained nothing; this config replaces it", out)
        return False
    return (out / MANIFEST).is_file()


def trained_anything(out: Path) -> bool:
    """A finished expert, a checkpoint, RASA's pairs or stage state, or an artifact: work that a
    different config must not mix with."""
    return (
        (out / MANIFEST).is_file()
        or (out / "pairs.jsonl").is_file()
        or (out / "state" / "trained.safetensors").is_file()
        or any(out.glob("experts/*/adapter_config.json"))
        or any((out / "checkpoints").rglob("trainer_state.json"))
    )


def run_recipe(
    cfg, precision: str, prepare: Callable[[Accelerator], P], train: Callable[[Accelerator, P, Path], None]
) -> Path:
    """The frame of every recipe's ``main``: skip a finished run, ``prepare(accelerator)`` (load and
    check everything) before claiming ``cfg.output_dir``, record the config, then ``train(accelerator,
    prepared, out)`` while holding the folder. Returns the folder."""
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=precision)
    log.info(
        "process %d of %d on %s, mixed precision %s",
        accelerator.process_index + 1, accelerator.num_processes, accelerator.device, accelerator.mixed_precision,
    )  # fmt: skip
    try:
        # Before any loading: a finished run costs nothing. Read on the main process, so that every
        # process takes the same branch.
        if on_main(
            accelerator,
            lambda: refuse_foreign(out, "training", is_run_folder) or finished_or_refused(out, cfg),
        ):
            log.info("%s already holds this run's finished artifact; nothing to train", out)
            return out
        prepared = prepare(accelerator)

        def record_run() -> bool:  # under the folder's lock, on the main process
            if finished_or_refused(out, cfg):  # finished while this process was preparing
                return True
            atomic_write_json(out / "run_config.json", to_dict(cfg))
            return False

        with claimed(out, "training", accelerator, record_run, ours=is_run_folder) as finished:
            if finished:
                log.info("%s already holds this run's finished artifact; nothing to train", out)
                return out
            train(accelerator, prepared, out)
        return out
    finally:
        accelerator.end_training()  # every way out leaves the process group (one torn down at exit can abort)


def write_mixture_artifact(accelerator: Accelerator, out: Path, cfg, *, mixture: Mixture, stage: Stage, experts: list[dict],
                           gate: GateConfig) -> None:  # fmt: skip
    """Gates, then the manifest (its presence means "complete"), then drop the router's resume state."""
    if accelerator.is_main_process:
        save_gates(mixture, out / GATES)
        write_manifest(
            out, recipe=cfg.recipe, config=to_dict(cfg), experts=experts, gate=gate, model=cfg.model
        )
        log.info("artifact written to %s", out)
    accelerator.wait_for_everyone()
    clear_checkpoint(accelerator, stage)


def recipe_stage(
    out: Path, name: str, checkpoint: str, model, examples, collate, cfg, loss_fn, callbacks=()
) -> Stage:
    """A training stage of a recipe run in ``out``: resume state under ``checkpoints/<checkpoint>``, the
    shared JSONL log under ``logs/``."""
    return Stage(
        name=name,
        model=model,
        examples=examples,
        collate=collate,
        cfg=cfg,
        loss_fn=loss_fn,
        checkpoint_dir=out / "checkpoints" / checkpoint,
        log_file=out / "logs" / "train.jsonl",
        callbacks=callbacks,
    )


def expert_done(accelerator: Accelerator, final: Path) -> bool:
    """Whether ``final`` already holds a finished PEFT adapter (a half-written one is cleared first)."""
    if accelerator.is_main_process:
        recover_dir(final)
    accelerator.wait_for_everyone()
    return (final / "adapter_config.json").is_file()


def train_lora_expert(accelerator: Accelerator, model: torch.nn.Module, lora: LoraConfig, seed: int, final: Path,
                      make_stage: Callable[[torch.nn.Module], Stage]) -> torch.nn.Module:  # fmt: skip
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
