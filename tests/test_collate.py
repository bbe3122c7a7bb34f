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
    kept = encode_all(
        [SFTExample("Hi", "x"), SFTExample("a much longer prompt", "x")], tokenizer, n_prompt + 2
    )
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
    assert tokenizer.decode(gen["input_ids"][0][gen["attention_mask"][0].bool()]).endswith(
        "<|im_start|>assistant\n"
    )


# --- preference pairs ----------------------------------------------------------------------------------


def _pair(chosen="Sure: abc", rejected="Sure: xyz!", **kw):
    from routealign.data import PreferencePair

    return PreferencePair("Q?", chosen, rejected, source="pairs.jsonl, line 3", **kw)


def test_pair_labels_cover_each_response_only(tokenizer):
    from routealign.data.collate import encode_pair

    enc = encode_pair(_pair(), tokenizer, 512)
    n = len(prompt_ids(tokenizer, "Q?"))
    for side, text in (("chosen", "Sure: abc"), ("rejected", "Sure: xyz!")):
        labels = enc[f"{side}_labels"]
        assert labels[:n] == [IGNORE] * n and enc[f"{side}_input_ids"][:n] == prompt_ids(tokenizer, "Q?")
        assert tokenizer.decode(labels[n:]) == text + "<|im_end|>\n"
    assert "chosen_score" not in enc


def test_pair_from_divergence_skips_the_shared_opening(tokenizer):
    """One token per byte: "Sure: " (6 tokens) is shared, so the loss starts at 'a' / 'x'."""
    from routealign.data.collate import encode_pair

    enc = encode_pair(
        _pair(chosen_score=0.5, rejected_score=2.0), tokenizer, 512, from_divergence=True, scores=True
    )
    n = len(prompt_ids(tokenizer, "Q?")) + len("Sure: ")
    assert enc["chosen_labels"][:n] == [IGNORE] * n and enc["rejected_labels"][:n] == [IGNORE] * n
    assert tokenizer.decode(enc["chosen_labels"][n:]) == "abc<|im_end|>\n"
    assert tokenizer.decode(enc["rejected_labels"][n:]) == "xyz!<|im_end|>\n"
    assert (enc["chosen_score"], enc["rejected_score"]) == (0.5, 2.0)


def test_pair_truncation_and_drops(tokenizer, caplog):
    from routealign.data.collate import encode_pair, encode_pairs

    n = len(prompt_ids(tokenizer, "Q?"))
    enc = encode_pair(_pair(), tokenizer, n + 3)
    assert [len(enc[k]) for k in ("chosen_input_ids", "rejected_input_ids")] == [n + 3, n + 3]
    # Within n + 6 tokens both responses read "Sure: ": nothing differs, so the pair is dropped.
    assert encode_pair(_pair(), tokenizer, n + 6, from_divergence=True) is None
    assert encode_pair(_pair(), tokenizer, n) is None  # the prompt alone fills max_length
    with caplog.at_level("WARNING"):
        kept = encode_pairs([_pair(), _pair(rejected="Sure: abd")], tokenizer, n + 8, from_divergence=True)
    assert len(kept) == 1 and "1 of 2 pairs dropped" in caplog.text
    with pytest.raises(DataError, match="pairs.jsonl, line 3: no preference pair has room"):
        encode_pairs([_pair()], tokenizer, n)


def test_pair_with_equal_responses_or_a_missing_score_is_an_error_naming_the_row(tokenizer):
    from routealign.data.collate import encode_pair

    with pytest.raises(
        DataError, match=r"pairs.jsonl, line 3: fields 'chosen' and 'rejected' hold the same response"
    ):
        encode_pair(_pair(rejected="Sure: abc"), tokenizer, 512)
    with pytest.raises(DataError, match=r"pairs.jsonl, line 3: field 'rejected_score' is missing"):
        encode_pair(_pair(chosen_score=1.0), tokenizer, 512, scores=True)
    assert "chosen_score" not in encode_pair(
        _pair(chosen_score=1.0), tokenizer, 512
    )  # not asked for: not carried


def test_pair_collator_puts_chosen_rows_first_and_stacks_extras(tokenizer):
    import torch

    from routealign.data.collate import encode_pair, pair_collator

    rows = [
        encode_pair(_pair(chosen_score=s, rejected_score=-s), tokenizer, 512, scores=True) for s in (1.0, 2.0)
    ]
    rows[1] = encode_pair(_pair(chosen="A much longer chosen answer.", chosen_score=2.0, rejected_score=-2.0), tokenizer, 512,
                          scores=True)  # fmt: skip
    batch = pair_collator(tokenizer)(rows)
    assert batch["input_ids"].shape[0] == 4
    for i, (row, side) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        ids = rows[row][f"{side}_input_ids"]
        assert batch["input_ids"][i, : len(ids)].tolist() == ids
        assert batch["attention_mask"][i].sum().item() == len(ids)
        assert (batch["labels"][i, len(ids) :] == IGNORE).all()
    assert batch["chosen_score"].tolist() == [1.0, 2.0] and batch["rejected_score"].tolist() == [-1.0, -2.0]
    assert batch["chosen_score"].dtype == torch.float32
    del rows[0]["chosen_score"]
    with pytest.raises(DataError, match="'chosen_score' is set for some pairs"):
        pair_collator(tokenizer)(rows)
