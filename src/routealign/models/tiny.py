"""Tiny random models and a byte-level tokenizer, built from code: tests and examples need no download."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# ChatML, as SmolLM2 and Qwen use it; the tiny tokenizer carries it so collation is tested for real.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer(chat_template: str | None = CHATML) -> PreTrainedTokenizerFast:
    """One token per byte (256) plus pad / im_start / im_end: vocabulary of 259.

    The byte symbols are numbered in sorted order: ``ByteLevel.alphabet()`` returns them in an order that
    changes from one process to the next, which made every random tiny model's answers differ between
    processes."""
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llama(
    vocab_size: int = 259,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
    **overrides,
) -> LlamaForCausalLM:
    """A dense Llama-style model with random weights."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=1024,
        pad_token_id=256,
        bos_token_id=257,
        eos_token_id=258,
        tie_word_embeddings=False,
        **overrides,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 256
    return model.eval()


# Per MoE family: how its config spells "E experts, top-k" and what else a tiny one needs. DeepSeek's
# tiny models keep one dense first layer and route in groups, as the real ones do.
_DEEPSEEK = {"moe_intermediate_size": 16, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 2,
             "topk_group": 1, "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8,
             "qk_nope_head_dim": 8, "v_head_dim": 8, "num_key_value_heads": 4}  # fmt: skip
TINY_MOE: dict[str, tuple[str, dict]] = {
    "mixtral": ("num_local_experts", {}),
    "qwen2_moe": ("num_experts", {"moe_intermediate_size": 16, "shared_expert_intermediate_size": 32}),
    "qwen3_moe": ("num_experts", {"moe_intermediate_size": 16}),
    "olmoe": ("num_experts", {}),
    "deepseek_v2": ("n_routed_experts", {**_DEEPSEEK, "topk_method": "group_limited_greedy"}),
    "deepseek_v3": ("n_routed_experts", _DEEPSEEK),
}
"""model_type → (its config field for the number of experts, extra config fields)."""


def tiny_moe(model_type: str = "mixtral", num_experts: int = 4, top_k: int = 2, num_layers: int = 2, seed: int = 0,
             hidden_size: int = 32, intermediate_size: int = 32, **overrides):  # fmt: skip
    """A transformers MoE model of the given family with random weights, built from a config."""
    experts_field, extra = TINY_MOE[model_type]
    fields = dict(
        vocab_size=259, hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=256,
        bos_token_id=257, eos_token_id=258, tie_word_embeddings=False, num_experts_per_tok=top_k,
    )  # fmt: skip
    config = AutoConfig.for_model(model_type, **{**fields, experts_field: num_experts, **extra, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Some families start routers (or their correction bias) at zero: route by real scores.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0, 0.5)
    model.generation_config.pad_token_id = 256
    return model.eval()
