"""SafeMoE's config: stage A (one LoRA expert per harm domain) and stage B (the gates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...config import GateConfig, LoraConfig, TrainConfig
from ...data import DataConfig
from ...recipe import RecipeConfig


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
class SafeMoEConfig(RecipeConfig):
    NAME: ClassVar[str] = "safemoe"
    recipe: str = "safemoe"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/safemoe"
    """Artifact folder (experts, gates, manifest) and training state."""
    experts: ExpertsStage = field(default_factory=ExpertsStage)
    """Stage A: one LoRA expert per harm domain, SFT on that domain's unsafe answers."""
    router: RouterStage = field(default_factory=RouterStage)
    """Stage B: the gates alone, on safe-and-informative answers."""
