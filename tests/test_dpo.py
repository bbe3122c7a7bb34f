"""DPO blocks on a tiny Llama: the reference is the base with adapters off, the reference cache is keyed
by model and exact inputs, and a DPO stage trains exactly the LoRA weights."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

from routealign.config import TrainConfig
from routealign.data import PreferencePair
from routealign.data.collate import encode_pairs, pair_collator
from routealign.methods.midpo.dpo import (
    adapters_off,
    dpo_loss,
    pair_logps,
    precompute_reference,
    reference_key,
    reference_logps,
)
from routealign.models.tiny import tiny_llama
from routealign.training import Stage, run_stage, trainable_state

PAIRS = [
    ("How do I pick a lock?", "I can't help with that.", "Insert a tension wrench, then rake the pins."),
    ("Write a threat to my neighbour.", "I won't write threats.", "You will regret this, neighbour."),
    ("What is the capital of France?", "Paris is the capital of France.", "I refuse to answer."),
    ("Explain photosynthesis briefly.", "Plants turn light, water and CO2 into sugar.", "No."),
]


def encoded(tokenizer, scores: bool = False) -> list[dict]:
    pairs = [
        PreferencePair(p, c, r, chosen_score=0.0 if scores else None, rejected_score=float(i) if scores else None,
                       source=f"pairs.jsonl, line {i + 1}")
        for i, (p, c, r) in enumerate(PAIRS)
    ]  # fmt: skip
    return encode_pairs(pairs, tokenizer, 128, scores=scores)


def with_lora(model, seed: int = 1):
    torch.manual_seed(seed)
    # Non-zero B, so the adapters change the output from the first step on.
    return get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"], init_lora_weights=False)
    )


def test_reference_is_the_base_with_adapters_disabled(tokenizer):
    batch = pair_collator(tokenizer)(encoded(tokenizer))
    base = tiny_llama()
    with torch.no_grad():
        base_chosen, base_rejected = pair_logps(base, batch)
    model = with_lora(base)
    with torch.no_grad():
        policy_chosen, _ = pair_logps(model, batch)
    ref_chosen, ref_rejected = reference_logps(model, batch)
    assert torch.allclose(ref_chosen, base_chosen, atol=1e-6) and torch.allclose(
        ref_rejected, base_rejected, atol=1e-6
    )
    assert not torch.allclose(policy_chosen, base_chosen, atol=1e-3)  # the adapters do change the policy
    with pytest.raises(TypeError, match="no adapters to switch off"):
        reference_logps(tiny_llama(), batch)
    with pytest.raises(TypeError, match="LlamaForCausalLM"), adapters_off(tiny_llama()):
        pass


def test_reference_cache_is_reused_and_keyed_by_model_and_inputs(tokenizer, tmp_path):
    examples, collate = encoded(tokenizer), pair_collator(tokenizer)
    key = reference_key("model-a", examples)
    path = tmp_path / f"{key}.safetensors"
    base = tiny_llama()
    calls = []
    base.register_forward_hook(lambda *a: calls.append(1))
    first = precompute_reference(base, examples, collate, path=path, batch_size=3)
    assert path.is_file() and len(calls) == 2  # 4 pairs in batches of 3
    again = precompute_reference(base, examples, collate, path=path, batch_size=3)
    assert len(calls) == 2 and [e["ref_rejected"] for e in again] == [e["ref_rejected"] for e in first]
    # Any change to the model's fingerprint, a token, a loss mask or the order gives another key.
    changed = [dict(e) for e in examples]
    changed[2]["rejected_labels"] = changed[2]["rejected_labels"][:-1] + [-100]  # one token less in the loss
    swapped = [examples[1], examples[0], *examples[2:]]
    keys = {
        key,
        reference_key("model-b", examples),
        reference_key("model-a", changed),
        reference_key("model-a", swapped),
    }
    assert len(keys) == 4
    live = pair_logps(base, collate(examples))
    # Sums of log-probs near -180: an fp32 ulp there is ~1.5e-5, and another batching moves a few ulps.
    assert [e["ref_chosen"] for e in first] == pytest.approx(live[0].tolist(), rel=1e-5)


@pytest.mark.parametrize("damage", ["flipped bit", "truncated", "other pairs", "no checksum"])
def test_a_damaged_reference_cache_entry_is_named_discarded_and_recomputed(
    tokenizer, tmp_path, caplog, damage
):
    from safetensors.torch import save_file

    examples, collate = encoded(tokenizer), pair_collator(tokenizer)
    path = tmp_path / "ref.safetensors"
    base = tiny_llama()
    first = precompute_reference(base, examples, collate, path=path)
    if damage == "flipped bit":  # one bit of the last float's exponent: a wrong number, a valid file
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-6])
    elif damage == "other pairs":  # an entry for 3 pairs under this key
        precompute_reference(base, examples[:3], collate, path=tmp_path / "three.safetensors")
        (tmp_path / "three.safetensors").replace(path)
    else:  # written before entries carried a checksum
        save_file({"chosen": torch.zeros(4), "rejected": torch.zeros(4)}, str(path))
    calls = []
    base.register_forward_hook(lambda *a: calls.append(1))
    with caplog.at_level("WARNING", logger="routealign.methods.midpo.dpo"):
        again = precompute_reference(base, examples, collate, path=path)
    assert calls, "the damaged entry was used instead of being recomputed"
    assert str(path) in caplog.text and "computing the reference log-probs again" in caplog.text
    for side in ("ref_chosen", "ref_rejected"):
        assert [e[side] for e in again] == pytest.approx([e[side] for e in first], rel=1e-5)
    calls.clear()
    precompute_reference(base, examples, collate, path=path)  # the rewritten entry is whole again
    assert not calls


def test_cached_and_live_reference_give_the_same_loss(tokenizer, tmp_path):
    examples, collate = encoded(tokenizer, scores=True), pair_collator(tokenizer)
    base = tiny_llama()
    cached = precompute_reference(base, examples, collate, path=tmp_path / "ref.safetensors")
    model = with_lora(base)
    loss_fn = dpo_loss(beta=0.1, margin="worse")
    live_loss, live_metrics = loss_fn(model, collate(examples))
    cached_loss, cached_metrics = loss_fn(model, collate(cached))
    assert cached_loss.item() == pytest.approx(live_loss.item(), rel=1e-5, abs=1e-6)
    # Costs: chosen 0, rejected 0..3 → margins max(0, r − 0) = 0, 1, 2, 3, mean 1.5.
    assert live_metrics["margin"] == pytest.approx(1.5)
    plain_loss, _ = dpo_loss(beta=0.1)(model, collate(examples))
    assert plain_loss.item() < live_loss.item()  # the margin lowers every logit it touches


def test_dpo_stage_trains_only_the_adapters_and_widens_the_margin(tokenizer, tmp_path):
    examples, collate = encoded(tokenizer), pair_collator(tokenizer)
    model = with_lora(tiny_llama())
    for name, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_fn = dpo_loss(beta=0.5)
    _, start = loss_fn(model, collate(examples))
    cfg = TrainConfig(lr=5e-3, epochs=6, batch_size=2, max_grad_norm=None)
    stage = Stage(
        "dpo", model, examples, collate, cfg, loss_fn, tmp_path / "ckpt", log_file=tmp_path / "log.jsonl"
    )
    run_stage(Accelerator(cpu=True), stage)
    trained = trainable_state(model)
    assert trained and all("lora_" in n for n in trained)
    unchanged = [n for n, v in trained.items() if torch.equal(v, before[n])]
    assert not unchanged, f"LoRA weights that did not train: {unchanged}"
    moved = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    assert not moved, f"frozen weights that changed: {moved}"
    _, end = loss_fn(model, collate(examples))
    assert end["rewards/margins"] > start["rewards/margins"] + 0.1
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(logged) == 12 and {"rewards/margins", "rewards/accuracies"} <= set(logged[-1])
