"""The mixture's maths: null expert = base, one-hot = PEFT alone, stacked = explicit per-expert sum."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from routealign.config import GateConfig
from routealign.models.mixture import MixtureError, attach_mixture, read_peft_expert
from routealign.models.tiny import tiny_llama

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11], [1, 2, 3, 4, 5, 6, 7, 8]])


def mixed(expert_dirs, **gate):
    model = tiny_llama()
    experts = [read_peft_expert(p) for p in expert_dirs]
    return model, attach_mixture(model, experts, GateConfig(**gate))


@torch.no_grad()
def test_null_expert_reproduces_base_logits(expert_dirs):
    base_logits = tiny_llama()(IDS).logits
    model, mix = mixed(expert_dirs)
    # A gate that puts (numerically) all its weight on the null expert, through the real gate path.
    for layer in mix.layers.values():
        layer.gate.net[-1].bias.copy_(torch.tensor([-1e4, -1e4, -1e4, 0.0]))
    assert torch.equal(model(IDS).logits, base_logits)
    with mix.mode("base"):
        assert torch.equal(model(IDS).logits, base_logits)
    # And a uniform gate really does change the output, so the two checks above can fail.
    for layer in mix.layers.values():
        layer.gate.net[-1].bias.zero_()
    assert not torch.allclose(model(IDS).logits, base_logits, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("k", [0, 1, 2])
def test_one_hot_matches_peft_with_that_adapter_alone(expert_dirs, k):
    peft_logits = PeftModel.from_pretrained(tiny_llama(), expert_dirs[k]).eval()(IDS).logits
    model, mix = mixed(expert_dirs)
    with mix.mode("fixed", torch.nn.functional.one_hot(torch.tensor(k), 3).float()):
        ours = model(IDS).logits
    torch.testing.assert_close(ours, peft_logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_stacked_form_equals_explicit_per_expert_sum(expert_dirs):
    torch.manual_seed(0)
    model, mix = mixed(expert_dirs, top_k=2)
    for layer in mix.layers.values():
        torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    experts = [read_peft_expert(p) for p in expert_dirs]
    x = torch.randn(2, 5, 32)
    for name, layer in mix.layers.items():
        probs = torch.softmax(layer.gate(x), -1)
        top = probs.topk(2, -1).indices
        probs = probs * torch.zeros_like(probs).scatter_(-1, top, 1.0)  # top-2, not renormalised
        expected = layer.base(x)
        for e, expert in enumerate(experts):  # y = W x + Σ_e g_e · s_e · B_e A_e x
            expected = expected + probs[..., e : e + 1] * expert.scaling * (x @ expert.A[name].T @ expert.B[name].T)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_kv_cache_decode_matches_full_forward(expert_dirs):
    model, mix = mixed(expert_dirs)
    for layer in mix.layers.values():
        torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    cached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_top_1_gate_still_learns():
    """Renormalised top-1 weights would be exactly 1 and carry no gradient; ours keep the probability."""
    from routealign.models.gates import expert_weights, route_probs

    logits = torch.randn(3, 5, requires_grad=True)
    w = expert_weights(route_probs(logits), null_expert=True, top_k=1)
    assert ((w > 0).sum(-1) <= 1).all()
    (w * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


@torch.no_grad()
def test_sequence_gate_uncached_decoding_matches_cached(expert_dirs):
    model, mix = mixed(expert_dirs, kind="sequence", layer=1)
    torch.nn.init.normal_(mix.sequence_gate.net[-1].weight, std=1.0)
    mask = torch.ones_like(IDS)
    mask[0, :2] = 0  # left padding in the first row
    seen = []
    model.register_forward_hook(lambda *_: seen.append(mix.state.sequence.clone()))
    cached = model.generate(IDS, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(IDS, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert len(seen) == 10 and all(torch.equal(s, seen[0]) for s in seen)  # routed from the prompt only


@torch.no_grad()
def test_sequence_gate_routes_once_from_the_prompt_and_reuses_it(expert_dirs):
    model, mix = mixed(expert_dirs, kind="sequence", layer=1)
    torch.nn.init.normal_(mix.sequence_gate.net[-1].weight, std=1.0)
    seen = []
    model.register_forward_hook(lambda *_: seen.append(mix.state.sequence.clone()))
    cached = model.generate(IDS, max_new_tokens=4, do_sample=False)
    assert all(torch.equal(s, seen[0]) for s in seen)  # prefill computed it, decode steps reused it
    assert not torch.allclose(seen[0][0], seen[0][1])  # and it differs per sequence
    # Pooling reads the frozen base only: the prompt's routing does not depend on the experts.
    with torch.no_grad():
        probs = mix.state.sequence
        model(IDS)
        torch.testing.assert_close(mix.state.sequence, probs)
    assert cached.shape == (2, 12)


def test_gate_parameters_are_a_small_share_of_the_base(expert_dirs):
    model, mix = mixed(expert_dirs)
    gates = sum(p.numel() for p in mix.gate_parameters())
    # 2 layers × q/k/v × (32·4 + 4) on a 35k-parameter toy; on SmolLM2-135M the same gates are 0.19%.
    assert gates == 2 * 3 * (32 * 4 + 4)


def test_rejects_dora_and_mismatched_shapes(tmp_path, expert_dirs):
    import json
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(expert_dirs[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MixtureError, match="use_dora"):
        read_peft_expert(bad)
    with pytest.raises(MixtureError, match="do not fit"):
        attach_mixture(tiny_llama(hidden_size=64, num_heads=4), [read_peft_expert(expert_dirs[0])], GateConfig())


@pytest.mark.parametrize(
    "shape, experts",
    [
        (dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152), 4),  # SmolLM2-135M
        (dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=128256), 14),  # Llama-3.1-8B, BeaverTails
    ],
)
@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_gates_stay_under_one_percent_of_real_model_sizes(shape, experts, kind):
    from transformers import LlamaConfig, LlamaForCausalLM

    from routealign.models.mixture import Expert

    with torch.device("meta"):  # real shapes, no memory
        model = LlamaForCausalLM(LlamaConfig(**shape))
        base = sum(p.numel() for p in model.parameters())
        modules = [n for n, _ in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))]
        fake = [
            Expert(f"e{i}", {m: torch.empty(8, model.get_submodule(m).in_features) for m in modules},
                   {m: torch.empty(model.get_submodule(m).out_features, 8) for m in modules}, 1.0)
            for i in range(experts)
        ]
        mix = attach_mixture(model, fake, GateConfig(kind=kind))
    share = sum(p.numel() for p in mix.gate_parameters()) / base
    assert share < 0.01, f"gates are {share:.2%} of the base"


def test_inference_fast_path_matches_training_path_and_follows_gate_updates(tmp_path):
    from tests.helpers import make_peft_experts

    model, mix = mixed(make_peft_experts(tmp_path, ranks=(4, 4, 4)))  # equal ranks: the reshape path
    layer = next(iter(mix.layers.values()))
    assert layer.rank == 4
    torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    x = torch.randn(2, 5, 32)
    mix.freeze_all_but_gates()
    slow = layer(x)  # grad enabled, gate trainable: separate gate and A matmuls
    with torch.no_grad():
        fast = layer(x)  # inference: one matmul over [A; gate]
        torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)
        layer.gate.net[-1].weight.mul_(-1.0)  # an in-place update must invalidate the fused copy
        torch.testing.assert_close(layer(x), _explicit(layer, x), atol=1e-5, rtol=1e-5)


def _explicit(layer, x):
    probs = torch.softmax(x @ layer.gate.net[-1].weight.T + layer.gate.net[-1].bias, -1)[..., :-1]
    h = (x @ layer.lora_A.T) * probs.repeat_interleave(layer.rank, -1)
    return layer.base(x) + h @ layer.lora_B.T


def test_bf16_model_routes_alike_in_training_and_inference(expert_dirs):
    """Gate logits are float32 in a bf16 model, with or without autocast, training or not."""
    model, mix = mixed(expert_dirs)
    model.to(torch.bfloat16)
    layer = next(iter(mix.layers.values()))
    layer.gate.float()
    torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    with mix.collecting() as probs:
        with torch.no_grad():
            layer(x)
        layer(x)  # grad enabled, gate trainable
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    assert all(p.dtype == torch.float32 for p in probs)
    assert torch.equal(probs[0], probs[1]) and torch.equal(probs[0], probs[2])
