"""Capability benchmarks: the log-likelihood scorer against hand computation, answer extraction, the MMLU
prompt, TruthfulQA MC1/MC2 on fixed numbers, loaders (local, headerless, hub columns), end to end on the
tiny model and a fake backend, the real shared files, and the lm-evaluation-harness bridge."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from routealign.data.sources import DataError
from routealign.evaluation import capability as cap
from routealign.generation import Generation
from routealign.models.tiny import byte_tokenizer, tiny_llama
from tests.helpers import SHARED_DATA, needs_smollm2, write_jsonl

CAPABILITY = SHARED_DATA / "capability"
needs_shared = pytest.mark.skipif(not CAPABILITY.is_dir(), reason=f"{CAPABILITY} is absent")


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def direct_loglik(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) from one unbatched, unpadded forward pass over context +
    continuation: the sum over continuation positions t of log_softmax(logits[t - 1])[token t].
    Context and continuation are tokenized apart (for the byte tokenizer, one token per byte, this is the
    running-text split; a BPE tokenizer that merged across the boundary would differ)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = ctx + tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids], device=model.device)).logits[0].double().log_softmax(-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(ctx), len(ids)))


def expected_mmlu(model, tokenizer, questions, dev, shots: int, chat: bool = False) -> list[tuple[list, str]]:
    """(log-likelihoods of A-D, predicted letter) per question, worked out with :func:`direct_loglik`."""
    out = []
    for q in questions:
        context = cap.mmlu_prompt(q, dev.get(q.subject, [])[:shots])
        letters = [" A", " B", " C", " D"]
        if chat:
            user = [{"role": "user", "content": context}]
            context = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
            letters = ["A", "B", "C", "D"]
        logliks = [direct_loglik(model, tokenizer, context, x) for x in letters]
        out.append((logliks, "ABCD"[max(range(4), key=logliks.__getitem__)]))
    return out


# ---- fixtures: small release-shaped files -----------------------------------------------------------

MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def write_csv(path: Path, rows: list[list], header: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def mmlu_folder(root: Path) -> Path:
    """Two subjects in the release layout: astronomy (dev 2, test 4), virology (dev 1, test 2)."""
    planets = [[f"Planet {i}?", "Mars", "Venus", "Earth", "Moon", i % 4] for i in range(4)]
    write_csv(root / "mmlu/test/astronomy_test.csv", planets, MMLU_HEADER)
    write_csv(
        root / "mmlu/dev/astronomy_dev.csv", [["Hot?", "Sun", "Ice", "Snow", "Rain", 0]] * 2, MMLU_HEADER
    )
    write_csv(root / "mmlu/test/virology_test.csv", [["Virus?", "a", "b", "c", "d", 1]] * 2, MMLU_HEADER)
    write_csv(root / "mmlu/dev/virology_dev.csv", [["Cell?", "x", "y", "z", "w", 3]], MMLU_HEADER)
    return root


GSM8K_ROWS = [
    {"question": "Ann has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
    {"question": "A pen costs $1,200. Two pens?", "answer": "2*1200=<<2*1200=2400>>2400\n#### 2,400"},
    {"question": "It is 3 degrees and drops 8. Now?", "answer": "3-8=-5\n#### -5"},
]

TRUTHFULQA_HEADER = [
    "Type",
    "Category",
    "Question",
    "Best Answer",
    "Correct Answers",
    "Incorrect Answers",
    "Source",
]
TRUTHFULQA_ROWS = [
    ["Adversarial", "Misconceptions", "What do seeds do?", "They pass through", "They pass through; Nothing",
     "You grow plants; You die", "src"],
    ["Non-Adversarial", "Health", "Is sugar bad?", "In excess", "In excess.", "Always; Never", "src"],
]  # fmt: skip


# ---- log-likelihood ---------------------------------------------------------------------------------


def test_loglikelihood_matches_hand_computed_log_softmax(model, tokenizer):
    """Context "Hi" (bytes H, i), continuation " x" (bytes ' ', x): the model reads [H, i, ' '] and
    log p = log softmax(logits[1])[' '] + log softmax(logits[2])[x], with
    log softmax(z)[k] = z[k] - log(sum_j exp z[j]), worked out here in float64 Python."""
    (score,) = cap.loglikelihood(model, tokenizer, [("Hi", " x")])
    h, i, space, x = (tokenizer.convert_tokens_to_ids(c) for c in ["H", "i", "Ġ", "x"])
    with torch.no_grad():
        logits = model(torch.tensor([[h, i, space]])).logits[0].double().tolist()

    def log_softmax(z: list[float], k: int) -> float:
        top = max(z)
        return z[k] - (top + math.log(sum(math.exp(v - top) for v in z)))

    assert score == pytest.approx(log_softmax(logits[1], space) + log_softmax(logits[2], x), abs=1e-4)


def test_loglikelihood_chain_rule(model, tokenizer):
    """log p(" cd" | a) = log p(" c" | a) + log p("d" | a + " c") with one token per byte."""
    whole, first, second = cap.loglikelihood(model, tokenizer, [("a", " cd"), ("a", " c"), ("a c", "d")])
    assert whole == pytest.approx(first + second, abs=1e-4)


def test_loglikelihood_is_batch_size_invariant(model, tokenizer):
    requests = [
        ("The sky is", " blue"),
        ("Q: 2+2?\nA:", " 4"),
        ("x", " a much longer continuation"),
        ("x", " b"),
    ]
    one = cap.loglikelihood(model, tokenizer, requests, batch_size=1)
    many = cap.loglikelihood(model, tokenizer, requests, batch_size=3)
    assert many == pytest.approx(one, rel=1e-5, abs=1e-5)  # sums of log-probs: a tolerance with their scale
    assert all(s < 0 for s in one)


def test_loglikelihood_truncates_context_from_the_left(model, tokenizer):
    long, short = "0123456789abc", "9abc"  # max_length 6 keeps the last 4 context bytes + " d"
    (cut,) = cap.loglikelihood(model, tokenizer, [(long, " d")], max_length=6)
    (direct,) = cap.loglikelihood(model, tokenizer, [(short, " d")])
    assert cut == pytest.approx(direct, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="no room"):
        cap.loglikelihood(model, tokenizer, [("a", " too long")], max_length=4)


def merging_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """Bytes plus one merge, "a" + "b" → "ab"; optionally a BOS put in front of every text."""
    vocab = {s: i for i, s in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["ab"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<s>", "<pad>"])
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="<s>"
    )


def test_encode_pair_boundary_rules():
    tok = merging_tokenizer()
    ab, a, b, x = (tok.convert_tokens_to_ids(t) for t in ["ab", "a", "b", "x"])
    # continuation tokenized as in running text: "x" + "ab" → [x] [ab]
    assert cap.encode_pair(tok, "x", "ab") == ([x], [ab])
    # "xa" + "b" merges across the boundary ([x, ab]): the halves are tokenized apart instead
    assert cap.encode_pair(tok, "xa", "b") == ([x, a], [b])
    # an empty context reads the EOS token
    assert cap.encode_pair(tok, "", "ab") == ([tok.eos_token_id], [ab])


def test_encode_pair_adds_the_tokenizers_bos_once():
    tok = merging_tokenizer(bos=True)
    bos, x, y = tok.bos_token_id, tok.convert_tokens_to_ids("x"), tok.convert_tokens_to_ids("y")
    assert cap.encode_pair(tok, "x", "y") == ([bos, x], [y])
    assert cap.encode_pair(tok, "<s>x", "y") == ([bos, x], [y])  # a rendered chat already opens with it


class Recorder(torch.nn.Module):
    """The tiny model behind a routed-looking facade that keeps every forward's kwargs."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.routealign_mixture = object()
        self.config, self.device = inner.config, inner.device

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return self.inner(input_ids=kwargs["input_ids"], attention_mask=kwargs["attention_mask"])


def test_routed_models_get_labels_masking_the_context(model, tokenizer):
    """MMLU-style: 2 one-byte letters after one context share a single input; the 3-byte answer's input
    ends with its first 2 bytes, labelled; context positions and padding are IGNORE."""
    recorder = Recorder(model)
    requests = [("ctx", "A"), ("ctx", "B"), ("ctx", "xyz")]
    scores = cap.loglikelihood(recorder, tokenizer, requests, batch_size=8)
    assert scores == pytest.approx(cap.loglikelihood(model, tokenizer, requests), rel=1e-5, abs=1e-5)
    (call,) = recorder.calls
    assert call["input_ids"].shape == (2, 5)  # "ctxxy" and "ctx" + padding
    labels = call["labels"]
    assert (
        labels[0, :3].tolist() == [cap.IGNORE] * 3
        and labels[0, 3:].tolist() == call["input_ids"][0, 3:].tolist()
    )
    assert labels[1].tolist() == [cap.IGNORE] * 5


# ---- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is $1,234.", "1234"),
        ("#### 72", "72"),
        ("She has 16-3-4=9 eggs.\n#### 9", "9"),
        ("It drops to -5 degrees.", "-5"),
        ("Each costs 3.50 dollars", "3.5"),
        ("So 18.00 in total.", "18"),
        ("#### 18\nThen 20 more", "18"),
        ("first 3, then 4, finally 5.", "5"),
        ("It costs -$7.", "-7"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert cap.extract_number(text) == expected


def test_mc1_and_mc2_on_fixed_logliks():
    """MC2: true p = 0.2, 0.1; false p = 0.1 → 0.3 / 0.4 = 0.75. MC1: best must strictly beat all false."""
    log = math.log
    assert cap.mc2_score([log(0.2), log(0.1)], [log(0.1)]) == pytest.approx(0.75)
    assert cap.mc2_score([-1000.0], [-1001.0]) == pytest.approx(1 / (1 + math.exp(-1)))  # no underflow
    assert cap.mc1_correct(-1.0, [-2.0, -3.0]) is True
    assert cap.mc1_correct(-2.0, [-2.0, -3.0]) is False  # a tie earns nothing
    assert cap.mc1_correct(-2.5, [-2.0, -3.0]) is False


# ---- MMLU -----------------------------------------------------------------------------------------


def test_mmlu_prompt_one_shot_exact():
    shot = cap.MCQuestion("d0", "high_school_physics", "What falls? ", ("rock", "gas", "light", "heat"), 0)
    question = cap.MCQuestion(
        "t0", "high_school_physics", "What is fast?", ("snail", "light", "tree", "rock"), 1
    )
    assert cap.mmlu_prompt(question, [shot]) == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "What falls?\nA. rock\nB. gas\nC. light\nD. heat\nAnswer: A\n\n"
        "What is fast?\nA. snail\nB. light\nC. tree\nD. rock\nAnswer:"
    )


def test_load_mmlu_local_layout_subjects_and_seeded_subsample(tmp_path):
    root = mmlu_folder(tmp_path)
    questions, dev = cap.load_mmlu(str(root))
    assert [q.id for q in questions][:2] == ["astronomy/test/0", "astronomy/test/1"] and len(questions) == 6
    assert questions[1].choices == ("Mars", "Venus", "Earth", "Moon") and questions[1].answer == 1
    assert len(dev["astronomy"]) == 2 and dev["virology"][0].answer == 3
    # the mmlu folder itself and a single test file work too
    assert len(cap.load_mmlu(str(root / "mmlu"))[0]) == 6
    only, only_dev = cap.load_mmlu(str(root / "mmlu/test/virology_test.csv"))
    assert {q.subject for q in only} == {"virology"} and list(only_dev) == ["virology"]
    picked, _ = cap.load_mmlu(str(root), subjects=["virology"])
    assert {q.subject for q in picked} == {"virology"}
    with pytest.raises(DataError, match="chemistry not found"):
        cap.load_mmlu(str(root), subjects=["chemistry"])
    a = [q.id for q in cap.load_mmlu(str(root), limit=3, seed=1)[0]]
    assert a == [q.id for q in cap.load_mmlu(str(root), limit=3, seed=1)[0]] and len(a) == 3
    assert a == [q.id for q in questions if q.id in a]  # kept in data order


def test_load_mmlu_headerless_original_release(tmp_path):
    write_csv(tmp_path / "test/anatomy_test.csv", [["Bone?", "a", "b", "c", "d", "C"]])
    write_csv(tmp_path / "dev/anatomy_dev.csv", [["Skin?", "a", "b", "c", "d", "B"]])
    questions, dev = cap.load_mmlu(str(tmp_path))
    assert questions[0].answer == 2 and dev["anatomy"][0].answer == 1


def test_load_mmlu_bad_rows_name_file_and_row(tmp_path):
    bad = write_csv(tmp_path / "x_test.csv", [["Q?", "a", "b", "c", "d"]], MMLU_HEADER[:-1])
    with pytest.raises(DataError, match=r"x_test\.csv, row 1: missing column 'answer'"):
        cap.load_mmlu(str(bad))
    bad = write_csv(
        tmp_path / "y_test.csv", [["Q?", "a", "b", "c", "d", 1], ["Q?", "a", "b", "c", "d", 7]], MMLU_HEADER
    )
    with pytest.raises(DataError, match=r"y_test\.csv, row 2: answer '7'"):
        cap.load_mmlu(str(bad))


def test_load_mmlu_from_hub_columns(monkeypatch):
    """cais/mmlu rows: question, subject, choices (list), answer (int); dev is the hub's dev split."""
    seen = []

    def fake_read_rows(name, *, subset=None, split="train"):
        seen.append((name, subset, split))
        for i, subject in enumerate(["anatomy", "virology", "anatomy"]):
            yield (
                f"{name}, row {i + 1}",
                {"question": f"q{i}", "subject": subject, "choices": ["w", "x", "y", "z"], "answer": i},
            )

    monkeypatch.setattr(cap.mmlu, "read_rows", fake_read_rows)
    questions, dev = cap.load_mmlu(subjects=["anatomy"])
    assert seen == [("cais/mmlu", "all", "test"), ("cais/mmlu", "all", "dev")]
    assert [q.id for q in questions] == ["anatomy/test/0", "anatomy/test/1"] and questions[1].answer == 2
    assert [q.question for q in dev["anatomy"]] == ["q0", "q2"]


class LetterLover(torch.nn.Module):
    """Fake backend: every position puts logit 5 on one token, 0 elsewhere."""

    def __init__(self, token_id: int, vocab: int = 259):
        super().__init__()
        self.token_id, self.vocab = token_id, vocab
        self.config, self.device = SimpleNamespace(max_position_embeddings=4096), torch.device("cpu")

    def forward(self, input_ids, attention_mask, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token_id] = 5.0
        return SimpleNamespace(logits=logits)


def test_mmlu_end_to_end_fake_backend_picks_its_letter(tmp_path, tokenizer):
    """A model that always prefers "B" answers B: right exactly where the answer is B (3 of 6 here)."""
    result = cap.run_capability(
        "mmlu",
        LetterLover(tokenizer.convert_tokens_to_ids("B")),
        tokenizer,
        path=str(mmlu_folder(tmp_path)),
        shots=2,
    )
    assert {r["prediction"] for r in result.rows} == {"B"}
    assert result.n == 6 and result.accuracy == pytest.approx(3 / 6)
    assert [r["correct"] for r in result.rows] == [r["target"] == "B" for r in result.rows]


def test_mmlu_end_to_end_tiny_model_plain_and_chat(tmp_path, model, tokenizer):
    """Each row's letter scores, prediction and verdict against the same questions scored one forward
    pass at a time (``direct_loglik``); accuracy is the share of those predictions that hit the key."""
    root = str(mmlu_folder(tmp_path))
    questions, dev = cap.load_mmlu(root, limit=3, seed=0)
    for chat, shots in ((False, 1), (True, 0)):
        result = cap.run_capability(
            "mmlu", model, tokenizer, path=root, shots=shots, limit=3, seed=0, chat=chat
        )
        expected = expected_mmlu(model, tokenizer, questions, dev, shots, chat=chat)
        assert [r["id"] for r in result.rows] == [q.id for q in questions]
        for row, q, (logliks, letter) in zip(result.rows, questions, expected, strict=True):
            assert row["logliks"] == pytest.approx(logliks, rel=1e-5, abs=1e-5)
            assert (row["prediction"], row["target"], row["category"]) == (
                letter,
                "ABCD"[q.answer],
                q.subject,
            )
            assert row["correct"] == (letter == "ABCD"[q.answer])
        hits = [letter == "ABCD"[q.answer] for q, (_, letter) in zip(questions, expected, strict=True)]
        assert result.n == 3 and result.accuracy == pytest.approx(sum(hits) / 3)
    with pytest.raises(DataError, match="no dev questions"):
        cap.evaluate_mmlu(model, tokenizer, cap.load_mmlu(root, limit=1)[0], {}, shots=1)


# ---- GSM8K ----------------------------------------------------------------------------------------


def test_load_gsm8k_targets_and_bad_rows(tmp_path):
    problems = cap.load_gsm8k(str(write_jsonl(tmp_path / "gsm8k/test.jsonl", GSM8K_ROWS)))
    assert [p.target for p in problems] == ["5", "2400", "-5"]
    assert [p.id for p in cap.load_gsm8k(str(tmp_path))] == [
        "0",
        "1",
        "2",
    ]  # the folder finds gsm8k/test.jsonl
    write_jsonl(tmp_path / "bad.jsonl", [GSM8K_ROWS[0], {"question": "no answer"}])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: missing column 'answer'"):
        cap.load_gsm8k(str(tmp_path / "bad.jsonl"))
    write_jsonl(tmp_path / "bad2.jsonl", [{"question": "q", "answer": "no final line"}])
    with pytest.raises(DataError, match=r"bad2\.jsonl, line 1: the answer does not end"):
        cap.load_gsm8k(str(tmp_path / "bad2.jsonl"))


def test_gsm8k_messages_with_a_shot():
    shot = cap.MathProblem("s", "1+1?", "1+1=<<1+1=2>>2\n#### 2", "2")
    problem = cap.MathProblem("p", "2+2?", "#### 4", "4")
    chat = cap.gsm8k_messages(problem, [shot])
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[0]["content"] == f"1+1?\n\n{cap.GSM8K_INSTRUCTION}"
    assert chat[1]["content"] == "1+1=2\n#### 2"  # calculator annotation removed
    assert chat[2]["content"].startswith("2+2?")


def test_gsm8k_end_to_end_planted_generations(tmp_path, monkeypatch, tokenizer):
    """generate() replaced by fixed answers: one right after ####, one right as last number, one wrong."""
    path = str(write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS))
    answers = ["2 and 3 make 5.\n#### 5", "Two pens cost $2,400.", "It is 11 degrees. #### 11"]
    seen = {}

    def fake_generate(model, tok, prompts, *, max_new_tokens, batch_size):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens)
        return [Generation(p, a, []) for p, a in zip(prompts, answers, strict=True)]

    monkeypatch.setattr(cap.gsm8k, "generate", fake_generate)
    result = cap.run_capability("gsm8k", None, tokenizer, path=path, max_new_tokens=17)
    assert [r["prediction"] for r in result.rows] == ["5", "2400", "11"]
    assert [r["correct"] for r in result.rows] == [True, True, False] and result.accuracy == pytest.approx(
        2 / 3
    )
    assert result.rows[2]["target"] == "-5" and result.rows[2]["output"] == answers[2]
    assert seen["max_new_tokens"] == 17 and len(seen["prompts"][0]) == 1  # 0-shot by default


def test_gsm8k_shots_come_from_train_or_unevaluated_test_problems(tmp_path):
    write_jsonl(tmp_path / "a/test.jsonl", GSM8K_ROWS)
    evaluated = cap.load_gsm8k(str(tmp_path / "a/test.jsonl"), limit=1, seed=0)
    shots = cap._gsm8k_shots(str(tmp_path / "a/test.jsonl"), 2, evaluated)
    assert len(shots) == 2 and evaluated[0].id not in {s.id for s in shots}
    write_jsonl(tmp_path / "a/train.jsonl", [{"question": "t?", "answer": "#### 1"}])
    assert [s.question for s in cap._gsm8k_shots(str(tmp_path / "a/test.jsonl"), 2, evaluated)] == ["t?"]


def test_gsm8k_end_to_end_tiny_model(tmp_path, model, tokenizer):
    path = str(write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS))
    result = cap.run_capability("gsm8k", model, tokenizer, path=path, shots=1, limit=2, max_new_tokens=4)
    targets = {str(i): t for i, t in enumerate(["5", "2400", "-5"])}
    assert result.n == 2 and all(r["target"] == targets[r["id"]] for r in result.rows)
    for r in result.rows:  # whatever the random model wrote, it is scored by the documented rule
        assert r["prediction"] == cap.extract_number(r["output"])  # None when it wrote no number
        assert r["correct"] == (r["prediction"] == r["target"]) and r["category"] is None
    assert result.accuracy == sum(r["correct"] for r in result.rows) / 2


def test_gsm8k_needs_a_chat_template(tmp_path, model):
    path = str(write_jsonl(tmp_path / "test.jsonl", GSM8K_ROWS))
    with pytest.raises(DataError, match="no chat template"):
        cap.run_capability("gsm8k", model, byte_tokenizer(chat_template=None), path=path)


# ---- TruthfulQA -----------------------------------------------------------------------------------


def test_load_truthfulqa_csv(tmp_path):
    path = write_csv(tmp_path / "TruthfulQA.csv", TRUTHFULQA_ROWS, TRUTHFULQA_HEADER)
    first, second = cap.load_truthfulqa(str(tmp_path))
    assert first.category == "Misconceptions" and first.question == "What do seeds do?"
    assert first.best == "They pass through." and first.correct == ("They pass through.", "Nothing.")
    assert first.incorrect == ("You grow plants.", "You die.")
    assert second.correct == ("In excess.",)
    assert len(cap.load_truthfulqa(str(path), limit=1, seed=3)) == 1


def test_load_truthfulqa_bad_row_names_file_and_row(tmp_path):
    rows = [TRUTHFULQA_ROWS[0], ["t", "c", "q?", "best", "ok", "", "s"]]
    path = write_csv(tmp_path / "tqa.csv", rows, TRUTHFULQA_HEADER)
    with pytest.raises(DataError, match=r"tqa\.csv, row 2: no incorrect answers"):
        cap.load_truthfulqa(str(path))
    path = write_csv(tmp_path / "tqa2.csv", [r[:4] for r in TRUTHFULQA_ROWS], TRUTHFULQA_HEADER[:4])
    with pytest.raises(
        DataError, match=r"tqa2\.csv, row 1: missing column 'Correct Answers' / 'correct_answers'"
    ):
        cap.load_truthfulqa(str(path))


def test_load_truthfulqa_hub_lists(monkeypatch):
    def fake_read_rows(name, *, subset=None, split="train"):
        assert (name, subset, split) == ("truthfulqa/truthful_qa", "generation", "validation")
        row = {"type": "Adversarial", "category": "Law", "question": "Q?", "best_answer": "Yes",
               "correct_answers": ["Yes", "Indeed"], "incorrect_answers": ["No"], "source": "s"}  # fmt: skip
        yield f"{name}, row 1", row

    monkeypatch.setattr(cap.truthfulqa, "read_rows", fake_read_rows)
    (q,) = cap.load_truthfulqa()
    assert (q.category, q.best, q.correct, q.incorrect) == ("Law", "Yes.", ("Yes.", "Indeed."), ("No.",))


def test_truthfulqa_end_to_end_matches_direct_scores(tmp_path, model, tokenizer):
    """MC1 and MC2 of both questions from log-likelihoods worked out one forward pass at a time: MC1 =
    the best answer beats every incorrect one; MC2 = the true answers' share of the probability mass."""
    path = write_csv(tmp_path / "TruthfulQA.csv", TRUTHFULQA_ROWS, TRUTHFULQA_HEADER)
    result = cap.run_capability("truthfulqa", model, tokenizer, path=str(path), batch_size=3)
    mc1, mc2 = [], []
    for row, q in zip(result.rows, cap.load_truthfulqa(str(path)), strict=True):
        prompt = f"Q: {q.question}\nA:"
        true = [direct_loglik(model, tokenizer, prompt, f" {a}") for a in q.correct]
        false = [direct_loglik(model, tokenizer, prompt, f" {a}") for a in q.incorrect]
        best = true[q.correct.index(q.best)]
        p_true, p_false = sum(math.exp(x) for x in true), sum(math.exp(x) for x in false)
        mc1.append(best > max(false))
        mc2.append(p_true / (p_true + p_false))
        assert (row["correct"], row["target"]) == (mc1[-1], q.best)
        assert row["mc2"] == pytest.approx(mc2[-1], abs=1e-5)
    assert result.rows[0]["category"] == "Misconceptions"
    assert result.metrics["mc1"] == result.accuracy == pytest.approx(sum(mc1) / 2)
    assert result.metrics["mc2"] == pytest.approx(sum(mc2) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="0-shot"):
        cap.run_capability("truthfulqa", model, tokenizer, path=str(path), shots=6)


# ---- by name ----------------------------------------------------------------------------------------


def test_run_capability_rejects_unknown_names_and_options(model, tokenizer):
    assert set(cap.CAPABILITIES) == {"mmlu", "gsm8k", "truthfulqa"}
    with pytest.raises(ValueError, match="unknown capability benchmark 'arc'"):
        cap.run_capability("arc", model, tokenizer)
    with pytest.raises(ValueError, match="mmlu only"):
        cap.run_capability("gsm8k", model, tokenizer, subjects=["x"])


def test_rows_are_json_serialisable(tmp_path, model, tokenizer):
    result = cap.run_capability("mmlu", model, tokenizer, path=str(mmlu_folder(tmp_path)), shots=0, limit=2)
    assert json.loads(json.dumps(result.rows)) == result.rows


@needs_shared
def test_real_shared_files_load_and_run(model, tokenizer):
    questions, dev = cap.load_mmlu(str(CAPABILITY), subjects=["anatomy", "virology"])
    assert len(dev["anatomy"]) == 5 and len(questions) > 100
    assert {q.answer for q in questions} == {0, 1, 2, 3}
    assert len(cap.load_gsm8k(str(CAPABILITY))) == 1319
    truthful = cap.load_truthfulqa(str(CAPABILITY / "TruthfulQA.csv"))
    assert len(truthful) == 817 and all(q.incorrect and q.best in q.correct for q in truthful)
    for name in ("mmlu", "truthfulqa"):
        result = cap.run_capability(
            name, model, tokenizer, path=str(CAPABILITY), limit=2, shots=0 if name == "truthfulqa" else 1
        )
        assert result.n == 2
    gsm = cap.run_capability("gsm8k", model, tokenizer, path=str(CAPABILITY), limit=2, max_new_tokens=4)
    assert gsm.n == 2 and all(r["target"] for r in gsm.rows)


@pytest.mark.slow
@needs_smollm2
@needs_shared
def test_smollm2_mmlu_20_items(embedded_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routealign.models.embedded import embedded_path

    path = embedded_path("smollm2-135m-instruct")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    result = cap.run_capability(
        "mmlu", model, tokenizer, path=str(CAPABILITY), limit=20, seed=0, shots=5, batch_size=4
    )
    print(f"SmolLM2-135M-Instruct MMLU 5-shot, 20 items (seed 0): accuracy {result.accuracy:.2f}")
    assert result.n == 20
    assert result.accuracy == pytest.approx(sum(r["prediction"] == r["target"] for r in result.rows) / 20)
    # The first three items scored again one unbatched forward pass per letter (GPT-2-style BPE keeps
    # "Answer:" and " A" apart, so tokenizing the two halves separately is the running-text split).
    questions, dev = cap.load_mmlu(str(CAPABILITY), limit=20, seed=0)
    expected = expected_mmlu(model, tokenizer, questions[:3], dev, shots=5)
    for row, (logliks, letter) in zip(result.rows[:3], expected, strict=True):
        assert row["logliks"] == pytest.approx(logliks, abs=2e-3) and row["prediction"] == letter


# ---- lm-evaluation-harness ------------------------------------------------------------------------


def test_run_lm_eval_without_the_package_says_how_to_install(monkeypatch, model, tokenizer):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ImportError, match="pip install lm-eval"):
        cap.run_lm_eval(model, tokenizer, ["mmlu"])


def test_run_lm_eval_wraps_the_loaded_model(monkeypatch, model, tokenizer):
    calls = {}

    returned = {}

    class FakeHFLM:
        def __init__(self, **kwargs):
            calls["hflm"], calls["lm"] = kwargs, self

    class FakeTaskManager:
        def __init__(self, include_path=None):
            self.include_path = include_path

    def simple_evaluate(**kwargs):
        calls["evaluate"] = kwargs
        return returned["value"]

    root = types.ModuleType("lm_eval")
    root.simple_evaluate = simple_evaluate
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = FakeHFLM
    tasks = types.ModuleType("lm_eval.tasks")
    tasks.TaskManager = FakeTaskManager
    for name, module in {"lm_eval": root, "lm_eval.models": types.ModuleType("lm_eval.models"),
                         "lm_eval.models.huggingface": hf, "lm_eval.tasks": tasks}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    marker = object()
    returned["value"] = marker
    out = cap.run_lm_eval(
        model, tokenizer, ("mmlu", "gsm8k"), limit=5, batch_size=2, num_fewshot=0, include_path="/t",
        log_samples=False,
    )  # fmt: skip
    assert out is marker  # lm-eval's result, handed back as it came
    hflm = calls["hflm"]
    assert hflm["pretrained"] is model and hflm["tokenizer"] is tokenizer and hflm["batch_size"] == 2
    evaluate = calls["evaluate"]
    assert evaluate["model"] is calls["lm"]  # the wrapper, not the bare model
    assert evaluate["tasks"] == ["mmlu", "gsm8k"] and isinstance(evaluate["tasks"], list)
    assert (evaluate["limit"], evaluate["num_fewshot"], evaluate["log_samples"]) == (5, 0, False)
    assert evaluate["task_manager"].include_path == "/t"
    returned["value"] = None  # what simple_evaluate gives on the non-main ranks of a distributed run
    assert cap.run_lm_eval(model, tokenizer, ["mmlu"]) == {}
    assert calls["evaluate"]["task_manager"] is None and calls["evaluate"]["limit"] is None


def test_run_lm_eval_for_real_on_a_local_task(tmp_path, model, tokenizer):
    """Only where lm-eval is installed: a task YAML over a local JSONL runs offline on the tiny model."""
    pytest.importorskip("lm_eval")
    data = write_jsonl(
        tmp_path / "data.jsonl", [{"q": f"{i}+1?", "choices": ["a", "b"], "gold": i % 2} for i in range(4)]
    )
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: gold\n'
        "metric_list:\n  - metric: acc\n"
    )
    out = cap.run_lm_eval(model, tokenizer, ["tiny_mc"], include_path=str(tmp_path), batch_size=2)
    # lm-eval's multiple choice: the choice with the highest log-likelihood of " " + choice after the
    # question (its target delimiter), right when it is the gold one; worked out here one pass at a time.
    hits = []
    for i in range(4):
        scores = [direct_loglik(model, tokenizer, f"{i}+1?", f" {c}") for c in "ab"]
        hits.append(max(range(2), key=scores.__getitem__) == i % 2)
    assert out["results"]["tiny_mc"]["acc,none"] == pytest.approx(sum(hits) / 4)
