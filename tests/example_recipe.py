"""A fourth method, as the docs' "Adding a method" page walks through it: a plain LoRA trained by SFT,
merged into the base model (a ``model`` artifact). Register it with ``register(RECIPE)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from peft import PeftModel

from routealign.config import LoraConfig, TrainConfig, to_dict
from routealign.data import DataConfig, load_sft
from routealign.data.collate import encode_all, ensure_chat_template, sft_collator
from routealign.io import atomic_dir
from routealign.methods.lora import ADAPTER_MARK, check_targets, train_lora_expert
from routealign.models.artifact import MANIFEST, MODEL_FOLDER, write_manifest
from routealign.models.loading import load_model, load_tokenizer
from routealign.recipe import Recipe, RecipeConfig, Run, Step


@dataclass
class SFTStage:
    data: DataConfig = field(default_factory=DataConfig)
    """(prompt, response) pairs to train on."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LoraSFTConfig(RecipeConfig):
    NAME: ClassVar[str] = "lora-sft"
    recipe: str = "lora-sft"
    output_dir: str = "runs/lora-sft"
    sft: SFTStage = field(default_factory=SFTStage)
    """The one stage: a LoRA trained by SFT."""


@dataclass
class Prepared:
    tokenizer: object
    model: torch.nn.Module
    examples: list[dict]


def prepare(cfg: LoraSFTConfig, accelerator) -> Prepared:
    """Everything that can be wrong fails here, before the run folder is claimed."""
    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    examples = encode_all(load_sft(cfg.sft.data), tokenizer, cfg.sft.train.max_length)
    model = load_model(cfg.model)
    check_targets(model, cfg.sft.lora.target_modules, "sft.lora.target_modules")
    return Prepared(tokenizer, model, examples)


def train_adapter(run: Run) -> None:
    cfg, prepared = run.cfg, run.prepared

    def make_stage(model):
        collate, loss = sft_collator(prepared.tokenizer), lambda m, batch: m(**batch).loss
        return run.training_stage("sft", "sft", model, prepared.examples, collate, cfg.sft.train, loss)

    prepared.model = train_lora_expert(
        run.accelerator, prepared.model, cfg.sft.lora, cfg.sft.train.seed, run.out / "adapter", make_stage
    )


def save_merged(run: Run) -> None:
    """The adapter merged into the base: a ``model`` artifact, which ``routealign.load`` reads."""
    if run.accelerator.is_main_process:
        merged = PeftModel.from_pretrained(run.prepared.model, run.out / "adapter").merge_and_unload()
        with atomic_dir(run.out / MODEL_FOLDER) as tmp:
            merged.save_pretrained(tmp)
            run.prepared.tokenizer.save_pretrained(tmp)
        write_manifest(
            run.out, kind="model", recipe=run.cfg.recipe, config=to_dict(run.cfg), model=run.cfg.model
        )
    run.accelerator.wait_for_everyone()


def stages(cfg: LoraSFTConfig, prepared: Prepared) -> list[Step]:
    return [
        Step("sft", train_adapter, marks=(f"adapter/{ADAPTER_MARK}",)),
        Step("merge", save_merged, marks=(MANIFEST,)),
    ]


RECIPE = Recipe(
    name="lora-sft",
    config=LoraSFTConfig,
    prepare=prepare,
    stages=stages,
    kind="model",
    leaves=(f"adapter/{ADAPTER_MARK}",),
)
