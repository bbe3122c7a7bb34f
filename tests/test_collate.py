"""Chat template rendering, response-only labels, truncation, and the no-template paths."""

from __future__ import annotations

import pytest

from routealign.data import DataError, SFTExample
from routealign.data.collate import (
    IGNORE,
    encode_all,
    encode_sft,
    ensure_chat_template,
    left_padded_prompts,
    prompt_ids,
    sft_collator,
)
from routealign.models.tiny import byte_tokenizer


def test_loss_only_on_the_response_and_its_end_of_turn(tokenizer):
    ex = SFTExample(prompt="How?", response="Like this.", system="Be brief.")
    enc = encode_sft(ex, tokenizer, 512)
    n_prompt = len(prompt_ids(tokenizer, "How?", "Be brief."))
    assert enc["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert tokenizer.decode(enc["labels"][n_prompt:]) == "Like this.<|im_end|>\n"
    assert "Be brief." in tokenizer.decode(enc["input_ids"][:n_prompt])


def test_truncation_keeps_the_prompt_and_drops_what_cannot_fit(tokenizer, caplog):
    n_prompt = len(prompt_ids(tokenizer, "Hi"))
    enc = encode_sft(SFTExample("Hi", "a long answer"), tokenizer, n_prompt + 3)
    assert len(enc["input_ids"]) == n_prompt + 3 and tokenizer.decode(enc["labels"][n_prompt:]) == "a l"
    assert encode_sft(SFTExample("Hi", "x"), tokenizer, n_prompt) is None
    kept = encode_all([SFTExample("Hi", "x"), SFTExample("a much longer prompt", "x")], tokenizer, n_prompt + 2)
    assert len(kept) == 1 and "1 of 2 examples dropped" in caplog.text
    with pytest.raises(DataError, match="f.jsonl, line 3: no example has room"):
        encode_all([SFTExample("a much longer prompt", "x", source="f.jsonl, line 3")], tokenizer, n_prompt)


def test_tokenizer_without_chat_template_errors_or_uses_the_plain_fallback():
    tok = byte_tokenizer(chat_template=None)
    with pytest.raises(DataError, match="chat_template_fallback: plain"):
        ensure_chat_template(tok, None, "tiny")
    ensure_chat_template(tok, "plain", "tiny")
    enc = encode_sft(SFTExample("Q", "A"), tok, 512)
    assert tok.decode(enc["input_ids"]) == "### User:\nQ\n\n### Assistant:\nA<|im_end|>\n\n"
    assert tok.decode([t for t in enc["labels"] if t != IGNORE]) == "A<|im_end|>\n\n"


def test_batches_pad_right_for_training_and_left_for_generation(tokenizer):
    encoded = encode_all([SFTExample("a", "bb"), SFTExample("a longer one", "c")], tokenizer, 512)
    batch = sft_collator(tokenizer)(encoded)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = len(encoded[0]["input_ids"])
    assert batch["attention_mask"][0, short:].sum() == 0 and (batch["labels"][0, short:] == IGNORE).all()
    gen = left_padded_prompts(tokenizer, ["a", "a longer one"])
    assert gen["attention_mask"][0, 0] == 0 and gen["attention_mask"][:, -1].all()
    assert tokenizer.decode(gen["input_ids"][0][gen["attention_mask"][0].bool()]).endswith("<|im_start|>assistant\n")
