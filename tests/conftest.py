"""Fixtures: tiny random Llama models, a byte tokenizer, PEFT expert folders, a small artifact, the
embedded-model cache, and for the judge tests a module's tiny model, a fake OpenAI-compatible server and a
stand-in progress bar."""

from __future__ import annotations

from pathlib import Path

import pytest

import routealign.judges.base as judges_base
from routealign.models.tiny import byte_tokenizer, tiny_llama
from tests.helpers import (  # noqa: F401 - group_umask is a fixture
    KEY_ENV,
    SECRET,
    FakeBar,
    FakeOpenAI,
    group_umask,
    make_peft_experts,
)


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def expert_dirs(tmp_path) -> list[Path]:
    return make_peft_experts(tmp_path / "experts")


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    """A tiny random Llama + byte tokenizer saved like any Hugging Face checkpoint."""
    folder = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def artifact(tmp_path, tiny_model_dir) -> Path:
    """A small SafeMoE artifact on the tiny model (two steps per stage)."""
    from routealign.config import load_config
    from routealign.methods.safemoe import SafeMoEConfig, main
    from tests.helpers import safemoe_config

    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 2
    data["router"]["train"]["max_steps"] = 2
    return main(load_config(SafeMoEConfig, data=data))


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    """One ROUTEALIGN_CACHE for the session, so SmolLM2 is converted from GGUF once per test run."""
    import os

    old = os.environ.get("ROUTEALIGN_CACHE")
    os.environ["ROUTEALIGN_CACHE"] = str(tmp_path_factory.mktemp("routealign-cache"))
    yield Path(os.environ["ROUTEALIGN_CACHE"])
    if old is None:
        del os.environ["ROUTEALIGN_CACHE"]
    else:
        os.environ["ROUTEALIGN_CACHE"] = old


# --- judges ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(), byte_tokenizer(chat_template=None)


@pytest.fixture
def fake_api(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def fake_bar(monkeypatch):
    FakeBar.opened = []
    monkeypatch.setattr(judges_base, "tqdm", FakeBar)
    return FakeBar
