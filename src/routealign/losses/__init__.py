"""Loss functions, each small and unit-tested against hand-worked numbers."""

from .routing import gate_entropy, load_balance, routing_regulariser

__all__ = ["gate_entropy", "load_balance", "routing_regulariser"]
