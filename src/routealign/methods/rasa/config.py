"""RASA's config: stage 0 (pairs), 1 (selection), 2 (repair), 3 (routing), and the rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import ConfigError, ModelConfig, TrainConfig
from ...data import DataConfig
from ...recipe import RecipeConfig

REFUSAL_SOURCES = ("template", "plain_response")
SETS = ("union", "global", "random")


@dataclass
class PairsStage:
    data: DataConfig = field(default_factory=lambda: DataConfig(format="prompts"))
    """Harmful requests (format ``prompts`` or a benchmark format; rows labelled benign are dropped)."""
    attacks: list[str] = field(default_factory=lambda: ["refusal-suppression"])
    """Attacks from the registry (``routealign.data.attacks``) that make each request a jailbreak."""
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per attack name, e.g. ``{template: {path: dan.txt}}``."""
    judge: str = "refusal-keywords"
    """The judge that labels refusals (``routealign judge --list``)."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    require_harmful: bool = False
    """A jailbreak counts as complied with when its answer is not a refusal; true = the judge must
    also rate it harmful."""
    refusal: str = "template"
    """The target of each pair. template: ``refusal_text``; plain_response: the model's own refusal of
    the plain request (cut to ``refusal_max_words`` words)."""
    refusal_text: str = "I'm sorry, but I can't help with that request."
    refusal_max_words: int = 40
    max_new_tokens: int = 64
    """Answer length when generating for the judge and for routing statistics."""
    batch_size: int = 8
    """Prompts per ``generate`` call."""
    system: str | None = None
    """System prompt placed before every prompt (training and generation alike)."""

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ConfigError("pairs.attacks: list at least one attack")
        if "plain" in self.attacks or "none" in self.attacks:
            raise ConfigError(
                "pairs.attacks: the plain request is always the other half of a pair; list only attacks"
            )
        stray = sorted(set(self.attack_options) - set(self.attacks))
        if stray:
            raise ConfigError(
                f"pairs.attack_options: {', '.join(stray)} not in attacks ({', '.join(self.attacks)})"
            )
        if self.refusal not in REFUSAL_SOURCES:
            raise ConfigError(f"pairs.refusal: {self.refusal!r} is not one of {', '.join(REFUSAL_SOURCES)}")
        if not self.refusal_text.strip():
            raise ConfigError("pairs.refusal_text: must not be empty")
        for name in ("max_new_tokens", "batch_size", "refusal_max_words"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pairs.{name}: must be ≥ 1")


@dataclass
class SelectionStage:
    fraction: float = 0.125
    """N per batch as a share of all (MoE layer × expert) slots (authors: 12.5%)."""
    top_n: int | None = None
    """N as a number of slots (overrides ``fraction``)."""
    batch_size: int = 16
    """Pairs per batch for the per-batch top-N."""
    set: str = "union"
    """Experts to repair. union: every slot chosen in some batch (the authors'); global: the top-N over
    all pairs; random: as many slots as the union, drawn at random (an ablation)."""
    seed: int = 0
    """Seed of the random set."""
    prompt_tokens: bool = False
    """Count the prompts' tokens as well as the generated ones."""

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"selection.fraction: must be in (0, 1], got {self.fraction}")
        if self.top_n is not None and self.top_n < 1:
            raise ConfigError(f"selection.top_n: must be ≥ 1 or null, got {self.top_n}")
        if self.batch_size < 1:
            raise ConfigError("selection.batch_size: must be ≥ 1")
        if self.set not in SETS:
            raise ConfigError(f"selection.set: {self.set!r} is not one of {', '.join(SETS)}")


@dataclass
class RepairStage:
    enabled: bool = True
    """False skips stage 2 (ablation: routing consistency alone)."""
    mode: str = "experts"
    """experts: train only the selected experts' slices; full: every parameter (the full-SFT ablation)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, epochs=1))
    """Authors: lr 5e-5, one epoch per round."""

    def __post_init__(self) -> None:
        if self.mode not in ("experts", "full"):
            raise ConfigError(f"repair.mode: must be 'experts' or 'full', got {self.mode!r}")


@dataclass
class RoutingStage:
    enabled: bool = True
    """False skips stage 3 (ablation: expert repair alone)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=1))
    """Authors: lr between 1e-6 and 1e-4."""


@dataclass
class RASAConfig(RecipeConfig):
    NAME: ClassVar[str] = "rasa"
    recipe: str = "rasa"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/rasa"
    """Run folder: pairs, selection, report, and the aligned model under ``model/``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """A transformers MoE model (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3), or a ``moefy`` folder."""
    pairs: PairsStage = field(default_factory=PairsStage)
    """Stage 0: (plain request, jailbreak) pairs where the plain one is refused and the jailbreak not."""
    selection: SelectionStage = field(default_factory=SelectionStage)
    """Stage 1: the experts jailbreaks use more than plain requests (risk difference)."""
    repair: RepairStage = field(default_factory=RepairStage)
    """Stage 2: the chosen experts trained to refuse the jailbreaks, routing fixed."""
    routing: RoutingStage = field(default_factory=RoutingStage)
    """Stage 3: the routers trained so a jailbreak routes like its plain request."""
    rounds: int = 3
    """Alternations of stage 2 and stage 3 (authors: 3)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be ≥ 1, got {self.rounds}")
        if not (self.repair.enabled or self.routing.enabled):
            raise ConfigError("repair.enabled, routing.enabled: at least one stage must run")
        if self.repair.mode == "full" and self.selection.set != "union":
            raise ConfigError("selection.set: has no effect with repair.mode: full (every parameter trains)")
