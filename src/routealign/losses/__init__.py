"""Loss functions, each small and unit-tested against hand-worked numbers."""

from .preference import DPOOutput, gate_regulariser, preference_margin, sequence_logps, spe_dpo_loss
from .routing import gate_entropy, load_balance, mean_routing, routing_kl, routing_regulariser

__all__ = [
    "DPOOutput",
    "gate_entropy",
    "gate_regulariser",
    "load_balance",
    "mean_routing",
    "preference_margin",
    "routing_kl",
    "routing_regulariser",
    "sequence_logps",
    "spe_dpo_loss",
]
