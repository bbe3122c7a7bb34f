"""MidPO's config: two experts trained by SPE-DPO (stage A) and the sigmoid gates (stage B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import ConfigError, GateConfig, LoraConfig, TrainConfig
from ...data import DataConfig
from ...recipe import RecipeConfig

EXPERTS = ("safety", "helpfulness")
"""Expert order in the mixture: gate output 0 is a (safety), output 1 is b (helpfulness)."""
MARGIN_SOURCES = ("none", "columns", "judge", "model")


@dataclass
class MarginConfig:
    source: str = "none"
    """Where SPE-DPO's preference margin comes from. none: margin 0 (plain DPO); columns: the pairs'
    ``chosen_score`` / ``rejected_score`` (map them with ``data.columns``); judge: a routealign judge's
    graded harmfulness score of each response, used as a cost; model: a reward or cost model (a
    transformers sequence classifier with one output, ``model``)."""
    higher_is: str | None = None
    """What a larger score means, stated explicitly: ``better`` (a reward) or ``worse`` (a cost; e.g.
    the beaver-7b cost model's scores, where negative = safer). Required for ``columns`` and ``model``;
    a judge's score is a cost, so for ``judge`` it is ``worse`` (or left out)."""
    model: str | None = None
    """``source: model``: hub id or folder of the reward / cost model."""
    model_revision: str | None = None
    """Its hub revision."""
    trust_remote_code: bool = False
    """Let that model's hub repository run its own code. Off unless you trust it."""
    judge: str = "minilm"
    """The judge scoring responses when ``source: judge`` (``routealign judge --list``)."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    """Options for that judge."""
    scale: float = 1.0
    """Multiplies the margin (scores on another scale than β·Δ)."""

    def __post_init__(self) -> None:
        if self.source not in MARGIN_SOURCES:
            raise ConfigError(f"margin.source: {self.source!r} is not one of {', '.join(MARGIN_SOURCES)}")
        if self.higher_is not in (None, "better", "worse"):
            raise ConfigError(f"margin.higher_is: must be 'better' or 'worse', got {self.higher_is!r}")
        if self.source == "model" and not self.model:
            raise ConfigError("margin.model: source: model needs the reward or cost model's hub id or folder")
        if self.source in ("columns", "model") and self.higher_is is None:
            raise ConfigError(
                "margin.higher_is: say whether a higher score is better (a reward) or worse (a cost)"
            )
        if self.source == "judge" and self.higher_is == "better":
            raise ConfigError("margin.higher_is: a judge's score is graded harmfulness, a cost: use 'worse'")
        if self.scale <= 0:
            raise ConfigError(f"margin.scale: must be > 0, got {self.scale}")

    @property
    def direction(self) -> str | None:
        """``better``/``worse`` for :func:`routealign.methods.midpo.dpo.dpo_loss`; None when there is no margin."""
        if self.source == "none":
            return None
        return self.higher_is or "worse"


def _expert_lora() -> LoraConfig:
    return LoraConfig(r=16, alpha=32, dropout=0.05, target_modules=["down_proj"])


def _dpo_train() -> TrainConfig:
    return TrainConfig(lr=1e-5, epochs=3, scheduler="cosine", warmup_ratio=0.03)


@dataclass
class ExpertStage:
    data: DataConfig = field(default_factory=lambda: DataConfig(format="preference"))
    """Preference pairs: for the safety expert, chosen = the safe response; for the helpfulness expert,
    chosen = the more helpful one (pku-saferlhf: ``columns: {preference: safety}`` / ``better``)."""
    margin: MarginConfig = field(default_factory=MarginConfig)
    lora: LoraConfig = field(default_factory=_expert_lora)
    """Authors: r 16, alpha 32, on ``down_proj``."""
    train: TrainConfig = field(default_factory=_dpo_train)
    """Authors: lr 1e-5, cosine, warmup 3%, 3 epochs."""
    beta: float = 0.1
    """DPO's β."""
    from_divergence: bool = False
    """Sum log-probs from the first token where chosen and rejected differ (the authors' code)."""
    precompute_reference: bool = True
    """Compute the reference log-probs once before training and cache them on disk (keyed by model
    fingerprint and exact inputs); false = the base model runs again at every step."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta: must be > 0, got {self.beta}")


def _sigmoid_gate() -> GateConfig:
    return GateConfig(mapping="sigmoid", null_expert=False, init_null=None)


@dataclass
class RouterStage:
    data: DataConfig = field(default_factory=lambda: DataConfig(format="preference"))
    """"Dual" pairs: both responses safe, chosen = the safer one that is also the more helpful one."""
    gate: GateConfig = field(default_factory=_sigmoid_gate)
    """Two sigmoid gates per adapted module and token (``mapping: sigmoid``, no null expert)."""
    train: TrainConfig = field(default_factory=_dpo_train)
    beta: float = 0.1
    gate_coef: float = 1.0
    """λ of ``λ·(mean|a| + mean|b − 1|)``, over non-padding tokens (authors: 1)."""
    from_divergence: bool = False
    precompute_reference: bool = True

    def __post_init__(self) -> None:
        if self.gate.mapping != "sigmoid" or self.gate.kind != "token":
            raise ConfigError(
                "gate: MidPO's gates are per-token independent sigmoids; set kind: token, mapping: sigmoid"
            )
        if self.beta <= 0:
            raise ConfigError(f"beta: must be > 0, got {self.beta}")
        if self.gate_coef < 0:
            raise ConfigError(f"gate_coef: must be ≥ 0, got {self.gate_coef}")


@dataclass
class MidPOConfig(RecipeConfig):
    NAME: ClassVar[str] = "midpo"
    recipe: str = "midpo"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/midpo"
    """Artifact folder (experts, gates, manifest) and training state."""
    safety: ExpertStage = field(default_factory=ExpertStage)
    """Stage A: the safety expert, SPE-DPO on pairs where exactly one response is safe."""
    helpfulness: ExpertStage = field(default_factory=ExpertStage)
    """Stage A: the helpfulness expert, SPE-DPO on pairs ranked by helpfulness."""
    router: RouterStage = field(default_factory=RouterStage)
    """Stage B: the gates alone, DPO on dual pairs against the base, plus the gate regulariser."""

    def stage(self, name: str) -> ExpertStage | RouterStage:
        return getattr(self, name)
