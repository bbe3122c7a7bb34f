"""routealign: align language models by routing (SafeMoE, MidPO, RASA) on any Hugging Face model."""

__version__ = "0.1.0"

from .models.artifact import load  # noqa: E402
from .models.artifact import load_artifact_tokenizer as load_tokenizer

__all__ = ["__version__", "load", "load_tokenizer"]
