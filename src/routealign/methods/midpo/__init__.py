"""MidPO (arXiv 2506.02460): a safety expert and a helpfulness expert, each trained by single-preference
enhanced DPO, mixed per token by sigmoid gates. The recipe is :mod:`.recipe`, its config :mod:`.config`,
DPO with the cached reference :mod:`.dpo`, reward and cost models for the margin :mod:`.reward`."""

from .config import EXPERTS, ExpertStage, MarginConfig, MidPOConfig, RouterStage
from .recipe import RECIPE, main, prepare

__all__ = [
    "EXPERTS",
    "RECIPE",
    "ExpertStage",
    "MarginConfig",
    "MidPOConfig",
    "RouterStage",
    "main",
    "prepare",
]
