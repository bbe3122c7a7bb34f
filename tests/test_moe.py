"""MoE introspection over every supported transformers family (tiny random models built from configs),
routing traces during batched generation, and chosen-expert deltas."""

from __future__ import annotations

import operator

import pytest
import torch
from transformers import AutoConfig

from routealign.config import ConfigError
from routealign.generation import routed_generate
from routealign.models.moe import (
    RouterTrace,
    expert_counts,
    expert_deltas,
    families,
    merge_deltas,
    merged_state_dict,
    moe_view,
)
from routealign.models.tiny import TINY_MOE, byte_tokenizer, tiny_llama, tiny_moe

FAMILIES = sorted(TINY_MOE)


# Written by hand from the transformers 5 model files, not read from routealign's table: per family, the
# config field holding the number of routed experts, how the router scores experts, and the block's
# shared parts (every token goes through them).
FAMILY_FACTS = {
    "mixtral": ("num_local_experts", "softmax", ()),
    "qwen2_moe": ("num_experts", "softmax", ("shared_expert", "shared_expert_gate")),
    "qwen3_moe": ("num_experts", "softmax", ()),
    "olmoe": ("num_experts", "softmax", ()),
    "deepseek_v2": ("n_routed_experts", "softmax", ("shared_experts",)),
    "deepseek_v3": ("n_routed_experts", "sigmoid", ("shared_experts",)),
}


def test_the_table_covers_the_families_the_tests_build():
    """The architectures table against the hand-written facts above and against the models transformers
    builds: the config fields it names are the ones transformers reads, and every shared part it names
    is there (moe_view skips a missing one silently, so a misspelt name would otherwise go unseen)."""
    assert set(families()) == set(TINY_MOE) == set(FAMILY_FACTS)
    assert families()["deepseek_v3"].scoring == "sigmoid" and families()["qwen2_moe"].shared == (
        "shared_expert",
        "shared_expert_gate",
    )
    for model_type, (experts_field, scoring, shared) in FAMILY_FACTS.items():
        row = families()[model_type]
        assert (row.num_experts, row.top_k, row.scoring, row.shared) == (
            experts_field,
            "num_experts_per_tok",
            scoring,
            shared,
        )
        config = AutoConfig.for_model(model_type, **{experts_field: 5, "num_experts_per_tok": 3})
        assert (getattr(config, row.num_experts), getattr(config, row.top_k)) == (5, 3), model_type
        model = tiny_moe(model_type, num_experts=4, top_k=2, num_layers=2)
        assert model.config.model_type == model_type
        block = getattr(operator.attrgetter(row.layers)(model)[-1], row.block)
        assert [name for name in shared if isinstance(getattr(block, name, None), torch.nn.Module)] == list(
            shared
        )
        assert len(moe_view(model).layers[-1].shared) == len(shared), model_type


@pytest.mark.parametrize("model_type", FAMILIES)
def test_view_finds_routers_and_fused_experts(model_type):
    model = tiny_moe(model_type, num_experts=4, top_k=2, num_layers=3)
    view = moe_view(model)
    dense_first = model_type.startswith("deepseek")  # first_k_dense_replace = 1 in the tiny config
    assert [layer.index for layer in view.layers] == ([1, 2] if dense_first else [0, 1, 2])
    assert view.num_experts == 4 and view.top_k == 2
    for layer in view.layers:
        assert layer.router.weight.shape == (4, 32)
        e, two_i, h = layer.experts.gate_up_proj.shape
        assert (e, h) == (4, 32) and layer.experts.down_proj.shape == (4, 32, two_i // 2)
    assert len(view.router_parameters()) == len(view.layers)


def test_a_dense_model_is_an_error_naming_its_architecture():
    with pytest.raises(
        ConfigError, match=r"LlamaForCausalLM \(model_type 'llama'\) is not a mixture-of-experts model.*moefy"
    ):
        moe_view(tiny_llama())


def test_expert_counts_by_hand():
    # Two rows, three positions, top-2 of 3 experts; row 1's last position is padding.
    indices = torch.tensor([[[0, 1], [1, 2], [0, 2]], [[2, 1], [2, 0], [1, 0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert expert_counts(indices, mask, 3).tolist() == [[2, 2, 2], [1, 1, 2]]


@pytest.mark.parametrize("model_type", ["olmoe", "qwen2_moe", "deepseek_v3"])
def test_generation_counts_match_a_forward_over_the_answer(model_type):
    """Routing recorded during batched, left-padded generation equals the routing of one unpadded
    forward over prompt + answer at the answer's positions (each token read once, the last one never)."""
    model, tokenizer = tiny_moe(model_type, num_experts=4, top_k=2), byte_tokenizer()
    view = moe_view(model)
    prompts = ["hi", "a much longer prompt than the first one"]
    gens = routed_generate(model, tokenizer, prompts, view, max_new_tokens=5, batch_size=2)
    from routealign.data.collate import prompt_ids

    for prompt, gen in zip(prompts, gens, strict=True):
        ids = prompt_ids(tokenizer, prompt)
        answer = gen.ids
        counted = min(len(answer), 4)  # 5 generated, the last never read back
        with torch.no_grad(), RouterTrace(view) as trace:
            model(torch.tensor([ids + answer]))
        expected = torch.stack([
            expert_counts(calls[0].view(1, -1, 2)[:, len(ids) : len(ids) + counted], torch.ones(1, counted), 4)[0]
            for calls in trace.indices
        ])  # fmt: skip
        assert gen.positions == counted
        assert torch.equal(gen.counts, expected)


def test_prompt_tokens_count_without_padding():
    model, tokenizer = tiny_moe("olmoe"), byte_tokenizer()
    view = moe_view(model)
    short, long_ = routed_generate(
        model, tokenizer, ["hi", "a longer prompt"], view, prompt_tokens=True, max_new_tokens=1
    )
    from routealign.data.collate import prompt_ids

    assert short.positions == len(prompt_ids(tokenizer, "hi")) and long_.positions == len(
        prompt_ids(tokenizer, "a longer prompt")
    )
    assert short.counts.sum(1).tolist() == [2 * short.positions] * len(view.layers)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_zero_deltas_change_nothing_and_merging_keeps_the_function(model_type):
    model = tiny_moe(model_type, num_experts=4, top_k=2)
    view = moe_view(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = model(ids).logits
        with expert_deltas(view, {0: [1, 3]}) as (delta,):
            assert torch.allclose(model(ids).logits, before, atol=1e-6)  # W + 0, summed in another order
            delta.gate_up_proj.normal_(0, 0.2)
            delta.down_proj.normal_(0, 0.2)
            hooked = model(ids).logits
            assert not torch.allclose(hooked, before, atol=1e-3)
            state = merged_state_dict(model.state_dict())
            assert not any("routealign_delta" in k for k in state)
            assert merge_deltas(view) == 2
        assert torch.allclose(model(ids).logits, hooked, atol=1e-6)
        assert [n for n, _ in model.named_parameters() if "routealign_delta" in n] == []
        for key, value in state.items():
            assert torch.equal(value, model.state_dict()[key])


def test_a_delta_gets_the_gradient_its_expert_slice_would_get():
    """At Δ = 0, dL/dΔ[j] is dL/dW[e] of the same model with W trainable; a chosen expert no token
    reaches gets a zero gradient; nothing else gets one."""
    model, ids = tiny_moe("mixtral", num_experts=4, top_k=2), torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    view = moe_view(model)
    model.requires_grad_(False)
    experts = view.layers[1].experts
    experts.gate_up_proj.requires_grad_(True)
    experts.down_proj.requires_grad_(True)
    model(ids, labels=ids).loss.backward()
    expected = {
        "gate_up_proj": experts.gate_up_proj.grad.clone(),
        "down_proj": experts.down_proj.grad.clone(),
    }
    with torch.no_grad(), RouterTrace(view) as trace:
        model(ids)
    reached = set(trace.indices[1][0].flatten().tolist())
    unreached = sorted(set(range(4)) - reached)
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    chosen = sorted(reached)[:1] + unreached[:1]
    with expert_deltas(view, {1: chosen}) as (delta,):
        delta.requires_grad_(True)
        model(ids, labels=ids).loss.backward()
        for name, grad in expected.items():
            got = getattr(delta, name).grad
            assert torch.allclose(got[0], grad[chosen[0]], atol=1e-6)
            if unreached:
                assert torch.equal(got[1], torch.zeros_like(got[1]))
            assert got.dtype == torch.float32
    assert all(p.grad is None for p in model.parameters())


def test_a_delta_for_an_expert_out_of_range_is_an_error():
    view = moe_view(tiny_moe("olmoe", num_experts=4))
    with pytest.raises(ValueError, match=r"experts \[4\] out of range 0..3"), expert_deltas(view, {0: [4]}):
        pass
    assert "routealign_delta" not in view.layers[0].experts._modules
