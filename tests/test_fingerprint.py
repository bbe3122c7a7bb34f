"""Model fingerprints (the answer cache's model key): contents, dtype and chat template decide; digests memoised."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from routealign.config import ModelConfig
from routealign.evaluation import fingerprint as fp
from routealign.models.tiny import byte_tokenizer, tiny_llama


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "digests"


@pytest.fixture
def hashed(monkeypatch):
    """The files actually read to hash them, in order (a memo hit reads nothing)."""
    reads = []
    original = fp.sha256_file
    monkeypatch.setattr(fp, "sha256_file", lambda path: reads.append(Path(path).name) or original(path))
    return reads


def _fingerprint(folder, dtype="auto", chat_template=None) -> fp.Fingerprint:
    cfg = ModelConfig(name_or_path=str(folder), dtype=dtype, chat_template=chat_template)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if chat_template:
        tokenizer.chat_template = chat_template
    return fp.hf_fingerprint(model, tokenizer, cfg)


def test_the_same_checkpoint_has_the_same_fingerprint_wherever_it_lies(tiny_model_dir, tmp_path):
    first = _fingerprint(tiny_model_dir)
    assert _fingerprint(tiny_model_dir).id == first.id
    moved = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    assert _fingerprint(moved).id == first.id  # contents decide, not the path
    assert first.parts["kind"] == "base" and first.parts["dtype"] == "float32"
    assert (
        first.parts["model"]["local"]["files"] == 6
    )  # weights, config, generation config, tokenizer ×2, template
    assert set(first.parts["versions"]) == {"transformers", "torch"}


def test_retrained_weights_in_the_same_folder_change_it(tiny_model_dir):
    before = _fingerprint(tiny_model_dir)
    tiny_llama(seed=1).save_pretrained(tiny_model_dir)  # "retraining" into the same folder
    assert _fingerprint(tiny_model_dir).id != before.id


def test_dtype_and_chat_template_change_it(tiny_model_dir):
    base = _fingerprint(tiny_model_dir)
    bf16 = _fingerprint(tiny_model_dir, dtype="bfloat16")
    assert bf16.parts["dtype"] == "bfloat16" and bf16.id != base.id
    other = _fingerprint(
        tiny_model_dir, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    assert other.parts["chat_template_sha256"] != base.parts["chat_template_sha256"] and other.id != base.id


def test_a_file_not_read_with_the_model_does_not_change_it(tiny_model_dir):
    before = _fingerprint(tiny_model_dir)
    (tiny_model_dir / "README.md").write_text("notes")
    (tiny_model_dir / "checkpoint-10").mkdir()
    (tiny_model_dir / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    assert _fingerprint(tiny_model_dir).id == before.id


def test_digests_are_memoised_and_a_changed_file_is_hashed_again(tmp_path, digest_cache, hashed):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    digest = fp.file_sha256(path)
    assert hashed == ["weights.bin"] and len(list(digest_cache.iterdir())) == 1
    assert fp.file_sha256(path) == digest and hashed == ["weights.bin"]  # the memo answered: no read
    st = path.stat()
    path.write_bytes(b"b" * 1000)  # same size, new contents
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    new = fp.file_sha256(path)
    assert hashed == ["weights.bin", "weights.bin"] and new != digest
    assert new == fp.sha256_file(path)


def test_a_second_fingerprint_reads_no_file(tiny_model_dir, hashed):
    _fingerprint(tiny_model_dir)
    assert "model.safetensors" in hashed
    read = len(hashed)
    _fingerprint(tiny_model_dir)
    assert len(hashed) == read


def test_a_corrupt_memo_is_hashed_again(tmp_path, digest_cache, hashed):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x")
    digest = fp.file_sha256(path)
    (memo,) = digest_cache.iterdir()
    memo.write_text("{not json")
    assert fp.file_sha256(path) == digest and len(hashed) == 2


def test_artifact_fingerprint_covers_manifest_gates_and_experts(tmp_path, expert_dirs):
    art = tmp_path / "art"
    (art / "experts").mkdir(parents=True)
    experts = []
    for i, src in enumerate(expert_dirs[:2]):
        shutil.copytree(src, art / "experts" / f"e{i}")
        experts.append({"name": f"e{i}", "path": f"experts/e{i}"})
    (art / "gates.safetensors").write_bytes(b"gates")
    manifest = {
        "format": "routealign-artifact",
        "format_version": 1,
        "model": {"name_or_path": "x"},
        "experts": experts,
        "gate": {},
    }
    (art / "routealign.json").write_text(json.dumps(manifest))
    first = fp.artifact_source(art)
    weights_and_config = [
        p for p in (art / "experts" / "e0").iterdir() if p.suffix != ".md"
    ]  # not PEFT's README
    assert first["local"]["files"] == 2 + 2 * len(weights_and_config) == 6
    (art / ".routealign.lock").write_text("pid 1")  # hidden files are not the model
    assert fp.artifact_source(art) == first
    weights = art / "experts" / "e1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert fp.artifact_source(art) != first


def test_a_model_artifact_fingerprint_covers_its_manifest_and_model_folder(tmp_path):
    """A RASA artifact (kind ``model``) has no gates or experts: its weights are under ``model/``."""
    from routealign.models.artifact import write_manifest

    art = tmp_path / "rasa-run"
    tiny_llama().save_pretrained(art / "model")
    byte_tokenizer().save_pretrained(art / "model")
    write_manifest(art, kind="model", recipe="rasa", config={}, model=ModelConfig(name_or_path="x"))
    first = fp.artifact_source(art)
    assert first["local"]["files"] == 1 + len([p for p in (art / "model").rglob("*") if p.is_file()])
    weights = art / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\1")
    assert fp.artifact_source(art) != first


def test_peft_adapter_folder_is_hashed(tmp_path, expert_dirs):
    first = fp.adapter_source(str(expert_dirs[0]))
    assert first["local"]["files"] >= 2 and fp.adapter_source(str(expert_dirs[1])) != first


def test_hub_ids_use_the_cached_commit_without_network(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = tmp_path / "hub" / "models--org--m" / "refs"
    refs.mkdir()
    (refs / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert fp.model_source("org/m") == {"hub": "org/m", "revision": None, "commit": commit}
    assert fp.model_source("org/not-cached")["commit"] is None


def test_api_fingerprint_keeps_no_credentials():
    parts = fp.api_fingerprint("http://user:secret@host:8000/v1/", "m").parts
    assert parts == {"kind": "api", "base_url": "http://host:8000/v1", "model": "m"}


def test_byte_tokenizer_template_is_what_counts(tmp_path):
    assert fp.chat_template_sha256(byte_tokenizer()) != fp.chat_template_sha256(
        byte_tokenizer(chat_template="x")
    )
    assert fp.chat_template_sha256(byte_tokenizer(chat_template=None)) is None
