"""Dense → MoE conversion: exact at k = E, a measured cost below it, clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from routealign.cli import main as cli_main
from routealign.config import ConfigError
from routealign.models.moe import moe_view
from routealign.models.moefy import balanced_clusters, convert, moefy, read_texts, text_batches
from routealign.models.tiny import byte_tokenizer, tiny_llama, tiny_moe

TEXTS = [f"The {w} is on the table next to the {v}, said the {u}." for w, v, u in
         [("cup", "book", "cook"), ("pen", "lamp", "clerk"), ("key", "door", "guard"), ("map", "chart", "pilot"),
          ("bowl", "spoon", "child"), ("coat", "hat", "tailor"), ("ball", "bat", "coach"), ("card", "deck", "dealer")]]  # fmt: skip


def test_balanced_clusters_are_equal_sized_and_group_coactive_rows():
    # Rows 0-3 fire on the first half of the "tokens", rows 4-7 on the second: two clean groups.
    features = torch.cat(
        [
            torch.tensor([[1.0] * 4 + [0.0] * 4]).repeat(4, 1),
            torch.tensor([[0.0] * 4 + [1.0] * 4]).repeat(4, 1),
        ]
    )
    features = features + 0.01 * torch.rand(8, 8, generator=torch.Generator().manual_seed(0))
    labels = balanced_clusters(features, 2, seed=1)
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(set(labels[:4].tolist())) == 1 and len(set(labels[4:].tolist())) == 1


def test_all_experts_reproduce_the_dense_logits_and_the_folder_loads(tmp_path):
    dense, tokenizer = tiny_llama(intermediate_size=64), byte_tokenizer()
    result = moefy(dense, text_batches(tokenizer, TEXTS, max_length=64), experts=4, top_k=4)
    moe = result.model
    assert moe_view(moe).shape == (2, 4) and moe.config.intermediate_size == 16
    ids = tokenizer(["Is the lamp next to the cup?"], return_tensors="pt")
    with torch.no_grad():
        expected = dense(**ids).logits
        # fp32; only the order of the per-neuron sums differs from the dense MLP
        assert torch.allclose(moe(**ids).logits, expected, atol=1e-5, rtol=0)
        moe.save_pretrained(tmp_path / "moe")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
        assert type(loaded).__name__ == "MixtralForCausalLM"
        assert torch.allclose(loaded(**ids).logits, expected, atol=1e-5, rtol=0)


def _trained_dense(tokenizer):
    """The tiny Llama after 100 Adam steps on TEXTS, so that its MLPs carry what it learnt: perplexity on
    the held-out half 1.04-1.21 instead of ≈ 257 (about the 259-token vocabulary). On the random model
    the MLPs are noise and top-1 of 4 even came out *better* than dense (256.30 vs 256.57); trained on
    the fit half alone, the converted model sometimes beat the overfitted dense one too. (Held out means
    not used by the conversion: the clustering and router see only the fit half.)"""
    torch.manual_seed(0)
    model = tiny_llama(intermediate_size=64).train()
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = model(**enc, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _heldout_perplexity(model, tokenizer) -> float:
    """exp of the token-weighted mean next-token loss over the held-out texts (TEXTS[1::2]), each read
    alone without padding, through transformers' own ``labels=`` loss: independent of moefy.perplexity."""
    total = count = 0.0
    with torch.no_grad():
        for text in TEXTS[1::2]:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            predicted = ids.shape[1] - 1
            total, count = total + float(model(input_ids=ids, labels=ids).loss) * predicted, count + predicted
    return math.exp(total / count)


def test_fewer_experts_per_token_cost_perplexity_and_it_is_reported():
    """On a dense model that has learnt the text, fewer experts per token cost more held-out perplexity:
    top-1 of 4 a ratio of 1.33-3.20, top-2 of 4 1.09-1.41, top-1 minus top-2 at least 0.23, top-4
    exactly 1 (30 runs: the byte tokenizer's ids follow PYTHONHASHSEED; one or two CPU threads). The
    reported perplexities are those of the dense and converted models on the held-out half, recomputed
    here through transformers' own loss."""
    tokenizer = byte_tokenizer()
    dense = _trained_dense(tokenizer)
    dense_ppl = _heldout_perplexity(dense, tokenizer)
    assert dense_ppl < 1.5  # it learnt the text (≈ 257 before training)
    result = convert(dense, tokenizer, TEXTS, experts=4, top_k=1, max_length=64)
    report = result.report
    assert report["heldout_texts"] == 4 and report["fit_texts"] == 4
    assert report["heldout_perplexity_moe"] != report["heldout_perplexity_dense"]
    assert report["perplexity_ratio"] == pytest.approx(
        report["heldout_perplexity_moe"] / report["heldout_perplexity_dense"], rel=1e-3
    )
    assert report["heldout_perplexity_dense"] == pytest.approx(dense_ppl, rel=1e-4)
    assert report["heldout_perplexity_moe"] == pytest.approx(
        _heldout_perplexity(result.model, tokenizer), rel=1e-4
    )
    assert report["perplexity_ratio"] > 1.2  # the cost has a direction: the converted model is worse
    top2 = convert(dense, tokenizer, TEXTS, experts=4, top_k=2, max_length=64).report
    assert report["perplexity_ratio"] > top2["perplexity_ratio"] + 0.1 and top2["perplexity_ratio"] > 1.0
    exact = convert(dense, tokenizer, TEXTS, experts=4, top_k=4, max_length=64).report
    assert (
        exact["perplexity_ratio"] == pytest.approx(1.0, abs=1e-4) and exact["max_abs_logit_difference"] < 1e-5
    )


@pytest.mark.parametrize(
    ("model", "experts", "top_k", "message"),
    [
        (lambda: tiny_llama(intermediate_size=64), 5, 5, "does not split into 5 equal experts"),
        (lambda: tiny_llama(intermediate_size=64), 4, 5, "top-k must be between 1 and the number of experts"),
        (lambda: tiny_llama(intermediate_size=64, attention_bias=True), 4, 4, "biases"),
        (lambda: tiny_moe("olmoe"), 4, 4, "is not a dense Llama-style model"),
    ],
)
def test_bad_conversions_are_errors(model, experts, top_k, message):
    with pytest.raises(ConfigError, match=message):
        moefy(model(), [], experts=experts, top_k=top_k)


def test_cli_converts_a_folder(tmp_path, tiny_model_dir, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "moe"
    assert (
        cli_main(
            [
                "moefy",
                str(tiny_model_dir),
                "--experts",
                "4",
                "--top-k",
                "2",
                "--output",
                str(out),
                "--text",
                str(texts),
            ]
        )
        == 0
    )
    report = json.loads((out / "moefy.json").read_text())
    assert report["experts"] == 4 and report["top_k"] == 2 and report["source_model"] == str(tiny_model_dir)
    assert moe_view(AutoModelForCausalLM.from_pretrained(out)).top_k == 2
    assert (out / "tokenizer_config.json").is_file()


def test_cli_never_replaces_a_folder_it_did_not_make(tmp_path, tiny_model_dir, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.md").write_text("results I keep here")
    args = [
        "moefy",
        str(tiny_model_dir),
        "--experts",
        "4",
        "--top-k",
        "4",
        "--output",
        str(out),
        "--text",
        str(texts),
    ]
    for extra in ([], ["--overwrite"]):  # refused even when asked: it is not a moefy output
        assert cli_main(args + extra) == 2
        assert "not a moefy output (no moefy.json)" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == ["paper.md"] and (
            out / "paper.md"
        ).read_text() == "results I keep here"
    (out / "paper.md").unlink()
    assert cli_main(args) == 0  # an empty folder is taken
    capsys.readouterr()
    assert cli_main(args) == 2  # an earlier moefy output is replaced only when asked
    assert "holds an earlier moefy output; pass --overwrite" in capsys.readouterr().err
    (out / "extra.txt").write_text("left by the user inside the converted model")
    assert cli_main(args + ["--overwrite"]) == 0
    assert not (out / "extra.txt").exists() and (out / "moefy.json").is_file()


def test_calibration_text_that_is_not_utf8_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("first line is fine\nCafé crème\n".encode("latin-1"))
    code = cli_main(["moefy", str(tiny_model_dir), "--experts", "4", "--top-k", "4", "--output", str(tmp_path / "moe"),
                     "--text", str(latin)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "latin1.txt, line 2: not UTF-8 text" in err and "Traceback" not in err
    assert not (tmp_path / "moe").exists()


def test_calibration_text_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a long enough calibration text here"}\n{"n": 1}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 2: no text field"):
        read_texts(str(bad))
    assert len(read_texts(None)) > 50  # the packaged quickstart texts
    with pytest.raises(ConfigError, match="3 calibration texts; at least 4"):
        convert(tiny_llama(intermediate_size=64), byte_tokenizer(), TEXTS[:3], experts=4, top_k=4)
