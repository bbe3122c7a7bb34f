"""Shared fixtures: tiny random Llama models, a byte tokenizer, and PEFT expert folders made from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from routealign.models.tiny import byte_tokenizer, tiny_llama

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def tiny():
    return tiny_llama()


def make_peft_experts(root: Path, ranks=(2, 4, 3), targets=("q_proj", "k_proj", "v_proj"), seed=1) -> list[Path]:
    """Save one randomly initialised (non-zero B) PEFT LoRA adapter per rank; return their folders."""
    paths = []
    for i, r in enumerate(ranks):
        torch.manual_seed(seed + i)
        cfg = LoraConfig(r=r, lora_alpha=2 * r + i, target_modules=list(targets), init_lora_weights=False)
        peft_model = get_peft_model(tiny_llama(), cfg)
        path = root / f"expert{i}"
        peft_model.save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture
def expert_dirs(tmp_path) -> list[Path]:
    return make_peft_experts(tmp_path / "experts")
