"""SafeMoE (arXiv 2606.00686): unsafe-knowledge LoRA experts per harm domain, mixed by gates trained on
safe-and-informative answers. The recipe is :mod:`.recipe`, its config :mod:`.config`."""

from .config import ExpertsStage, RouterStage, SafeMoEConfig
from .recipe import RECIPE, main, prepare

__all__ = ["RECIPE", "ExpertsStage", "RouterStage", "SafeMoEConfig", "main", "prepare"]
