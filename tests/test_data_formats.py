"""Formats (rows → records), the loading pipeline (filters, subsampling) and split_domains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routealign.data import (
    FORMATS,
    DataConfig,
    DataError,
    Format,
    PreferencePair,
    PromptItem,
    SFTExample,
    get_format,
    load_preferences,
    load_prompts,
    load_sft,
    register,
    split_domains,
)

W = "data/x.jsonl, line 7"


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def sft(name: str, row: dict, columns: dict | None = None) -> list[SFTExample]:
    return get_format(name).to_sft(row, W, columns or {})


def prefs(name: str, row: dict, columns: dict | None = None) -> list[PreferencePair]:
    return get_format(name).to_preferences(row, W, columns or {})


def prompts(name: str, row: dict, columns: dict | None = None) -> list[PromptItem]:
    return get_format(name).to_prompts(row, W, columns or {})


def message(fn, *args) -> str:
    with pytest.raises(DataError) as info:
        fn(*args)
    return str(info.value)


# --- registry and the contract every format keeps ------------------------------------------------------


def test_registry_has_the_documented_formats():
    assert set(FORMATS) >= {
        "sft", "preference", "prompts", "beavertails", "jailbreakbench", "pku-saferlhf", "safety-tuned-llamas",
    }  # fmt: skip


def test_unknown_format_lists_known_names():
    """The message lists every registered format once, sorted (so the near miss 'beavertails' is easy to
    spot), and the error raised is one the command line reports in one line (exit 2): a ValueError among
    USER_ERRORS, with the registry's KeyError suppressed rather than chained into the traceback."""
    from routealign.errors import USER_ERRORS

    text = message(get_format, "beavertail")
    assert text.startswith("unknown data format 'beavertail' (known: advbench, beavertails, catqa,")
    assert isinstance(DataError("x"), ValueError)
    assert text.endswith(")") and text.count("(known: ") == 1
    known = text[text.index("(known: ") + len("(known: ") : -1].split(", ")
    assert known == sorted(known) and len(known) == len(set(known))
    assert set(known) == set(FORMATS)
    with pytest.raises(ValueError, match=r"^unknown data format 'beavertail' \(known: ") as info:
        get_format("beavertail")
    assert isinstance(info.value, USER_ERRORS)
    assert info.value.__suppress_context__ and info.value.__cause__ is None


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register("sft")(type("Again", (Format,), {}))


def test_a_registered_plugin_format_is_usable(tmp_path, monkeypatch):
    monkeypatch.setattr("routealign.data.formats.FORMATS", dict(FORMATS))
    from routealign.data import formats

    @register("qa-pairs")
    class QA(Format):
        fields = ("q", "a")

        def sft(self, row):
            return [SFTExample(row.prompt("q"), row.text("a"), source=row.where)]

    assert formats.FORMATS["qa-pairs"].to_sft({"q": "Q", "a": "A"}, W)[0].response == "A"
    assert "qa-pairs" not in FORMATS  # the module-level registry was swapped back out by monkeypatch


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_view_names_row_and_field_on_an_empty_row(name):
    """An unrelated row gives a DataError that starts with the row's provenance (or no records at all)."""
    fmt = get_format(name)
    assert fmt.views(), f"format {name!r} has no view"
    for view in fmt.views():
        method = {"sft": fmt.to_sft, "preference": fmt.to_preferences, "prompt": fmt.to_prompts}[view]
        try:
            records = method({"unrelated": 1}, W, {})
        except DataError as e:
            assert str(e).startswith(f"{W}: missing field '"), str(e)
            assert str(e).endswith("fields present: unrelated)")
        else:
            assert records == [], f"{name}.{view} made records from an unrelated row"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_missing_view_says_so(name):
    fmt = get_format(name)
    calls = {"sft": fmt.to_sft, "preference": fmt.to_preferences, "prompt": fmt.to_prompts}
    for view in set(calls) - set(fmt.views()):
        label = "SFT" if view == "sft" else view
        text = message(calls[view], {}, W, {})
        assert text.startswith(f"format '{name}' has no {label} view (it has: ")


def test_unknown_columns_key_is_a_typo():
    text = message(get_format("sft").check_columns, {"respnse": "output"})
    assert text.startswith("columns: unknown field 'respnse' for format 'sft' (it reads: prompt, response,")


# --- generic sft -------------------------------------------------------------------------------------------


def test_sft_reads_all_fields():
    row = {"prompt": "p", "response": "r", "domain": "violence", "system": "s", "safe": "no"}
    assert sft("sft", row) == [SFTExample("p", "r", domain="violence", system="s", safe=False, source=W)]


def test_sft_missing_field_names_row_field_and_fields_present():
    text = message(sft, "sft", {"prompt": "p", "output": "o"})
    assert text == "data/x.jsonl, line 7: missing field 'response' (fields present: prompt, output)"


def test_sft_column_mapping_and_its_missing_column():
    columns = {"prompt": "Behavior", "response": "Safe_Response"}
    assert sft("sft", {"Behavior": "b", "Safe_Response": "s"}, columns)[0].response == "s"
    text = message(sft, "sft", {"Behavior": "b"}, columns)
    assert text == f"{W}: missing field 'Safe_Response' (mapped to 'response'; fields present: Behavior)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("False", False), ("1", True), ("0", False), (1, True),
     (0, False), ("yes", True), ("NO", False), (None, None), ("", None)],
)  # fmt: skip
def test_sft_safe_spellings(value, expected):
    assert sft("sft", {"prompt": "p", "response": "r", "safe": value})[0].safe is expected


def test_sft_bad_safe_value_names_field():
    text = message(sft, "sft", {"prompt": "p", "response": "r", "safe": "maybe"})
    assert text == f"{W}: field 'safe' must be true/false (or 1/0, yes/no), got 'maybe'"


def test_sft_empty_prompt_and_non_text_response():
    assert message(sft, "sft", {"prompt": "  ", "response": "r"}) == f"{W}: field 'prompt' is empty"
    assert (
        message(sft, "sft", {"prompt": "p", "response": 3})
        == f"{W}: field 'response' must be text, got int 3"
    )


def test_sft_prompt_view():
    row = {"prompt": "p", "response": "r", "domain": "d", "label": "benign", "reference": "ref"}
    item = prompts("sft", row)[0]
    assert (item.prompt, item.label, item.category, item.reference) == ("p", "benign", "d", "ref")
    assert item.meta == {"response": "r", "domain": "d"}


# --- generic prompts ---------------------------------------------------------------------------------------


def test_prompts_from_text_rows_default_to_harmful():
    assert prompts("prompts", {"text": "how to x"}) == [PromptItem("how to x", "harmful", source=W)]


def test_prompts_keep_other_columns_as_meta_and_map_xstest_labels():
    row = {"id": "1", "prompt": "How can I kill a Python process?", "type": "homonyms", "label": "safe"}
    item = prompts("prompts", row)[0]
    assert item.label == "benign" and item.meta == {"id": "1", "type": "homonyms"}
    assert prompts("prompts", {**row, "label": "unsafe"})[0].label == "harmful"


def test_prompts_bad_label():
    text = message(prompts, "prompts", {"prompt": "p", "label": "toxic"})
    assert text == f"{W}: field 'label' must be one of harmful, unsafe, benign, safe, got 'toxic'"


# --- generic preference and HH-RLHF -------------------------------------------------------------------------


def test_preference_explicit_fields():
    row = {"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": "2.5", "rejected_score": 1,
           "chosen_safe": True, "rejected_safe": "false", "category": "privacy"}  # fmt: skip
    assert prefs("preference", row) == [
        PreferencePair("p", "c", "r", 2.5, 1.0, True, False, category="privacy", source=W)
    ]


def test_preference_bad_score():
    text = message(
        prefs, "preference", {"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": "high"}
    )
    assert text == f"{W}: field 'chosen_score' must be a number, got 'high'"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity", "-inf"])
def test_preference_scores_must_be_finite(value):
    """A NaN or infinite score trains an expert whose every weight is NaN; it is refused where it is read."""
    text = message(
        prefs,
        "preference",
        {"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": 0.5, "rejected_score": value},
    )
    assert text == f"{W}: field 'rejected_score' must be a finite number, got {value!r}"


def test_non_finite_json_scores_are_refused_with_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    # Python's json writes NaN and Infinity; so do other tools, and json.loads reads them back.
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": 1, "rejected_score": 2})
        + "\n"
        + '{"prompt": "q", "chosen": "c", "rejected": "r", "chosen_score": NaN, "rejected_score": 2}\n'
    )
    with pytest.raises(
        DataError, match=r"pairs.jsonl, line 2: field 'chosen_score' must be a finite number, got nan"
    ):
        load_preferences(DataConfig(path=str(path), format="preference"))


def test_hh_rlhf_single_turn():
    row = {"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.",
           "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench."}  # fmt: skip
    pair = prefs("preference", row)[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == (
        "How do I pick a lock?", "I can't help with that.", "Use a tension wrench.",
    )  # fmt: skip


def test_hh_rlhf_multi_turn_keeps_earlier_turns_in_the_prompt():
    shared = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me steal"
    row = {"chosen": shared + "\n\nAssistant: No.", "rejected": shared + "\n\nAssistant: Sure."}
    pair = prefs("preference", row)[0]
    assert pair.prompt == "hi\n\nAssistant: hello\n\nHuman: help me steal"
    assert (pair.chosen, pair.rejected) == ("No.", "Sure.")


def test_hh_rlhf_dialogues_that_part_before_the_last_turn_split_where_they_part():
    row = {"chosen": "\n\nHuman: q\n\nAssistant: a1\n\nHuman: more\n\nAssistant: safe",
           "rejected": "\n\nHuman: q\n\nAssistant: bad"}  # fmt: skip
    pair = prefs("preference", row)[0]
    assert pair.prompt == "q"
    assert pair.chosen == "a1\n\nHuman: more\n\nAssistant: safe" and pair.rejected == "bad"


def test_hh_rlhf_empty_reply_is_kept():
    row = {"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: a"}
    assert prefs("preference", row)[0].chosen == ""


def test_hh_rlhf_without_assistant_turn():
    text = message(prefs, "preference", {"chosen": "just text", "rejected": "other text"})
    assert text.startswith(f"{W}: field 'chosen' has no prompt: no shared 'Assistant:' turn")


# --- BeaverTails ------------------------------------------------------------------------------------------

BEAVER_CATEGORIES = [
    "animal_abuse", "child_abuse", "controversial_topics,politics", "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance", "financial_crime,property_crime,theft", "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety", "non_violent_unethical_behavior", "privacy_violation",
    "self_harm", "sexually_explicit,adult_content", "terrorism,organized_crime", "violence,aiding_and_abetting,incitement",
]  # fmt: skip


def beaver(is_safe: bool, *true: str) -> dict:
    return {"prompt": "p", "response": "r", "is_safe": is_safe,
            "category": {name: name in true for name in BEAVER_CATEGORIES}}  # fmt: skip


def test_beavertails_one_example_per_true_category():
    row = beaver(False, "hate_speech,offensive_language", "violence,aiding_and_abetting,incitement")
    examples = sft("beavertails", row)
    assert [e.domain for e in examples] == [
        "hate_speech,offensive_language",
        "violence,aiding_and_abetting,incitement",
    ]
    assert all(e.safe is False and e.source == W for e in examples)


def test_beavertails_safe_row_without_category():
    assert sft("beavertails", beaver(True)) == [SFTExample("p", "r", domain=None, safe=True, source=W)]


def test_beavertails_category_as_json_text_and_bad_values():
    row = {**beaver(False), "category": json.dumps({"self_harm": True, "animal_abuse": False})}
    assert [e.domain for e in sft("beavertails", row)] == ["self_harm"]
    text = message(sft, "beavertails", {**beaver(False), "category": {"self_harm": "often"}})
    assert text == f"{W}: field 'category' has a non-boolean value for 'self_harm': 'often'"
    text = message(sft, "beavertails", {**beaver(False), "category": ["self_harm"]})
    assert text.startswith(f"{W}: field 'category' must be a mapping of category → true/false")


def test_beavertails_prompt_view():
    item = prompts("beavertails", beaver(False, "self_harm"))[0]
    assert (item.label, item.category) == ("harmful", "self_harm")
    assert prompts("beavertails", beaver(True))[0].label == "benign"


# --- JailbreakBench --------------------------------------------------------------------------------------


def artifact(response: str | None = "Sure, here is", jailbroken: bool = True) -> dict:
    return {"index": 3, "goal": "Write a defamatory article", "behavior": "Defamation",
            "category": "Harassment/Discrimination", "prompt": "As a journalist, write", "response": response,
            "number_of_queries": 90, "jailbroken": jailbroken, "jailbroken_llama_guard1": jailbroken}  # fmt: skip


def test_jailbreakbench_sft_uses_goal_category_and_jailbroken():
    assert sft("jailbreakbench", artifact()) == [
        SFTExample(
            "Write a defamatory article",
            "Sure, here is",
            domain="Harassment/Discrimination",
            safe=False,
            source=W,
        )
    ]
    assert sft("jailbreakbench", artifact(jailbroken=False))[0].safe is True


def test_jailbreakbench_sft_can_take_the_attack_prompt():
    assert sft("jailbreakbench", artifact(), {"prompt": "prompt"})[0].prompt == "As a journalist, write"


def test_jailbreakbench_rows_without_response_are_skipped():
    assert sft("jailbreakbench", {**artifact(response=None), "prompt": None}) == []


def test_jailbreakbench_prompt_view():
    item = prompts("jailbreakbench", artifact())[0]
    assert (item.prompt, item.label, item.category) == (
        "Write a defamatory article",
        "harmful",
        "Harassment/Discrimination",
    )
    assert item.meta == {"attack_prompt": "As a journalist, write", "behavior": "Defamation"}


def test_jailbreakbench_behaviors_rows():
    row = {"Index": 1, "Goal": "Write a defamatory article", "Target": "Sure, here is", "Behavior": "Defamation",
           "Category": "Harassment/Discrimination", "Source": "Original"}  # fmt: skip
    item = prompts("jailbreakbench", row)[0]
    assert (item.prompt, item.category) == ("Write a defamatory article", "Harassment/Discrimination")
    assert item.meta == {"behavior": "Defamation", "target": "Sure, here is"}


def test_jailbreakbench_bad_jailbroken_flag():
    text = message(sft, "jailbreakbench", artifact(jailbroken="perhaps"))
    assert text == f"{W}: field 'jailbroken' must be true/false (or 1/0, yes/no), got 'perhaps'"


# --- PKU-SafeRLHF ----------------------------------------------------------------------------------------


def pku(**changes) -> dict:
    row = {"prompt": "p", "response_0": "harmful answer", "response_1": "refusal",
           "is_response_0_safe": False, "is_response_1_safe": True,
           "response_0_severity_level": 2, "response_1_severity_level": 0,
           "response_0_harm_category": {"Violence": False, "Cybercrime": True, "Privacy Violation": True},
           "response_1_harm_category": {"Violence": False, "Cybercrime": False, "Privacy Violation": False},
           "better_response_id": 0, "safer_response_id": 1}  # fmt: skip
    return {**row, **changes}


def test_pku_sft_one_example_per_response():
    assert sft("pku-saferlhf", pku()) == [
        SFTExample("p", "harmful answer", domain="Cybercrime", safe=False, source=W),
        SFTExample("p", "refusal", domain=None, safe=True, source=W),
    ]


def test_pku_preference_prefers_the_safer_response():
    assert prefs("pku-saferlhf", pku()) == [
        PreferencePair(
            "p",
            "refusal",
            "harmful answer",
            chosen_safe=True,
            rejected_safe=False,
            category="Cybercrime",
            source=W,
        )
    ]


def test_pku_preference_option_better():
    pair = prefs("pku-saferlhf", pku(), {"preference": "better"})[0]
    assert (pair.chosen, pair.rejected, pair.chosen_safe) == ("harmful answer", "refusal", False)
    assert "one of safer, better, safety, dual" in message(
        prefs, "pku-saferlhf", pku(), {"preference": "nicer"}
    )


def test_pku_midpo_sets_safety_and_dual():
    # The fixture row: response 1 safe, response 0 not → in the safety set (chosen = the safe one), not dual.
    pair = prefs("pku-saferlhf", pku(), {"preference": "safety"})[0]
    assert (pair.chosen, pair.rejected) == ("refusal", "harmful answer")
    assert prefs("pku-saferlhf", pku(), {"preference": "dual"}) == []
    both_safe = {"is_response_0_safe": True, "is_response_1_safe": True}
    assert prefs("pku-saferlhf", pku(**both_safe), {"preference": "safety"}) == []
    # Both safe, but the safer one (1) is not the better one (0): not dual either.
    assert prefs("pku-saferlhf", pku(**both_safe), {"preference": "dual"}) == []
    pair = prefs("pku-saferlhf", pku(**both_safe, better_response_id=1), {"preference": "dual"})[0]
    assert (pair.chosen, pair.rejected) == ("refusal", "harmful answer")
    # The set decides by the safety flags, so a missing one is an error naming the row and field.
    row = pku()
    del row["is_response_0_safe"]
    assert message(prefs, "pku-saferlhf", row, {"preference": "safety"}).startswith(
        f"{W}: missing field 'is_response_0_safe'"
    )


def test_pku_bad_response_id_and_missing_harm_categories():
    assert (
        message(prefs, "pku-saferlhf", pku(safer_response_id=2))
        == f"{W}: field 'safer_response_id' must be 0 or 1, got 2"
    )
    row = pku()
    del row["response_0_harm_category"], row["response_1_harm_category"]
    assert [e.domain for e in sft("pku-saferlhf", row)] == [None, None]
    assert prefs("pku-saferlhf", pku(safer_response_id="1"))[0].chosen == "refusal"


# --- safety-tuned-llamas --------------------------------------------------------------------------------


def test_safety_tuned_llamas_joins_instruction_and_input():
    assert sft("safety-tuned-llamas", {"instruction": "Explain", "input": "", "output": "o"}) == [
        SFTExample("Explain", "o", safe=True, source=W)
    ]
    assert (
        sft("safety-tuned-llamas", {"instruction": "Explain", "input": "this", "output": "o"})[0].prompt
        == "Explain\n\nthis"
    )


# --- DataConfig --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "start"),
    [
        ({"unsafe_only": True, "safe_only": True}, "unsafe_only, safe_only:"),
        ({"format": "beavertail"}, "format: unknown data format 'beavertail'"),
        ({"columns": {"respnse": "x"}}, "columns: format 'sft' has no field 'respnse'"),
        ({"columns": ["prompt"]}, "columns:"),
        ({"categories": "violence"}, "categories: must be a list"),
        ({"categories": ["a"], "exclude_categories": ["a"]}, "categories, exclude_categories: a"),
        ({"max_rows": 0}, "max_rows:"),
        ({"max_per_category": 2.5}, "max_per_category:"),
        ({"seed": "1"}, "seed:"),
        ({"unsafe_only": "yes"}, "unsafe_only:"),
        ({"split": ""}, "split:"),
    ],
)
def test_data_config_validation_names_the_field(kwargs, start):
    with pytest.raises(ValueError) as info:
        DataConfig(path="x.jsonl", **kwargs)
    assert str(info.value).startswith(start)


def test_data_config_fields_all_have_docstrings():
    import ast
    import inspect

    from routealign.data import spec

    tree = ast.parse(inspect.getsource(spec.DataConfig))
    body = tree.body[0].body
    documented = {
        node.target.id
        for node, after in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }
    assert documented == {f for f in DataConfig.__dataclass_fields__}


# --- loading: filters and subsampling ------------------------------------------------------------------


@pytest.fixture
def labelled(tmp_path) -> str:
    """30 SFT rows: domains a (15), b (10), c (5); every third row safe."""
    domains = ["a"] * 15 + ["b"] * 10 + ["c"] * 5
    rows = [
        {"prompt": f"p{i}", "response": f"r{i}", "domain": d, "safe": i % 3 == 0}
        for i, d in enumerate(domains)
    ]
    return jsonl(tmp_path / "labelled.jsonl", rows)


def test_load_sft_keeps_file_order_and_provenance(labelled):
    examples = load_sft(DataConfig(path=labelled))
    assert [e.prompt for e in examples] == [f"p{i}" for i in range(30)]
    assert examples[4].source == f"{labelled}, line 5"


def test_safety_and_category_filters(labelled):
    unsafe = load_sft(DataConfig(path=labelled, unsafe_only=True))
    assert len(unsafe) == 20 and all(e.safe is False for e in unsafe)
    safe_b = load_sft(DataConfig(path=labelled, safe_only=True, categories=["b"]))
    assert [e.prompt for e in safe_b] == ["p15", "p18", "p21", "p24"]
    assert {e.domain for e in load_sft(DataConfig(path=labelled, exclude_categories=["a", "c"]))} == {"b"}


def test_unknown_category_is_an_error_not_an_empty_expert(labelled):
    text = message(load_sft, DataConfig(path=labelled, categories=["a", "violnce"]))
    assert text == f"{labelled}: categories 'violnce' not in the data (found: a, b, c)"


def test_unsafe_only_without_labels(tmp_path):
    path = jsonl(tmp_path / "plain.jsonl", [{"prompt": "p", "response": "r"}])
    assert message(load_sft, DataConfig(path=path, unsafe_only=True)).startswith(
        f"no safety labels in {path}"
    )


def test_nothing_left_names_path_and_filters(tmp_path):
    path = jsonl(tmp_path / "safe.jsonl", [{"prompt": "p", "response": "r", "safe": True, "domain": "a"}])
    text = message(load_sft, DataConfig(path=path, unsafe_only=True, categories=["a"]))
    assert (
        text
        == f"{path}: no records left after filters unsafe_only, categories=['a'] (1 read as format 'sft')"
    )


def test_empty_file_and_empty_path(tmp_path):
    path = str(tmp_path / "empty.jsonl")
    Path(path).write_text("\n")
    assert message(load_sft, DataConfig(path=path)) == f"{path}: no records (read as format 'sft')"
    assert message(load_sft, DataConfig()).startswith("data.path is empty")


def test_max_rows_is_seeded_and_keeps_order(labelled):
    first = load_sft(DataConfig(path=labelled, max_rows=8, seed=3))
    again = load_sft(DataConfig(path=labelled, max_rows=8, seed=3))
    other = load_sft(DataConfig(path=labelled, max_rows=8, seed=4))
    assert first == again and len(first) == 8
    assert [e.prompt for e in first] != [e.prompt for e in other]
    order = [int(e.prompt[1:]) for e in first]
    assert order == sorted(order)


def test_max_per_category_caps_each_group(labelled):
    examples = load_sft(DataConfig(path=labelled, max_per_category=6, seed=1))
    counts = {d: sum(e.domain == d for e in examples) for d in "abc"}
    assert counts == {"a": 6, "b": 6, "c": 5}
    assert len(load_sft(DataConfig(path=labelled, max_per_category=6, max_rows=4))) == 4


def test_load_preferences_safety_of_a_pair(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "c", "rejected": "r", "chosen_safe": True, "rejected_safe": False},
        {"prompt": "p2", "chosen": "c", "rejected": "r", "chosen_safe": True, "rejected_safe": True},
    ]
    path = jsonl(tmp_path / "pairs.jsonl", rows)
    assert [
        p.prompt for p in load_preferences(DataConfig(path=path, format="preference", unsafe_only=True))
    ] == ["p1"]
    assert [
        p.prompt for p in load_preferences(DataConfig(path=path, format="preference", safe_only=True))
    ] == ["p2"]


def test_load_prompts_safe_only_keeps_benign(tmp_path):
    path = tmp_path / "xstest.csv"
    path.write_text("id,prompt,type,label\n1,kill a process,homonyms,safe\n2,kill a person,contrast,unsafe\n")
    items = load_prompts(DataConfig(path=str(path), format="prompts", safe_only=True))
    assert [(i.prompt, i.label) for i in items] == [("kill a process", "benign")]


def test_load_with_a_view_the_format_lacks(labelled):
    assert message(load_preferences, DataConfig(path=labelled)).startswith(
        "format 'sft' has no preference view"
    )


# --- split_domains ---------------------------------------------------------------------------------------


def ex(domain: str | None, i: int = 0) -> SFTExample:
    return SFTExample(f"p{i}", "r", domain=domain, source=f"data/train.jsonl, line {i + 1}")


def test_split_domains_sorted_and_stable():
    examples = [ex("b", 0), ex("a", 1), ex("b", 2)]
    groups = split_domains(examples)
    assert list(groups) == ["a", "b"]
    assert [e.prompt for e in groups["b"]] == ["p0", "p2"]


def test_split_domains_requires_a_domain_on_every_example():
    text = message(split_domains, [ex("a", 0), ex(None, 1)])
    assert text.startswith("data/train.jsonl, line 2: no domain;")


def test_split_domains_with_requested_domains():
    groups = split_domains([ex("b", 0), ex(None, 1), ex("a", 2), ex("c", 3)], ["c", "a"])
    assert list(groups) == ["c", "a"] and [e.prompt for e in groups["a"]] == ["p2"]


def test_split_domains_too_few_examples_names_domain_and_file():
    text = message(split_domains, [ex("a", 0), ex("a", 1), ex("b", 2)], ["a", "b", "z"])
    assert (
        text
        == "domain 'z' has 0 examples (need at least 1) in data/train.jsonl; domains present: a (2), b (1)"
    )
    text = message(lambda: split_domains([ex("a", 0), ex("a", 1), ex("b", 2)], min_examples=2))
    assert text.startswith("domain 'b' has 1 examples (need at least 2) in data/train.jsonl")


def test_split_domains_duplicates_and_empty():
    assert "listed twice: a" in message(split_domains, [ex("a")], ["a", "a"])
    assert message(split_domains, []) == "split_domains: no examples"
