"""The loaders on the real public data in ../shared/data (read in place, never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from routealign.data import DataConfig, load_preferences, load_sft, read_rows, split_domains

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the shared data folder sits next to the repository)")
    return path


JBB_CATEGORIES = {
    "Disinformation", "Economic harm", "Expert advice", "Fraud/Deception", "Government decision-making",
    "Harassment/Discrimination", "Malware/Hacking", "Physical harm", "Privacy", "Sexual/Adult content",
}  # fmt: skip


def test_jailbreakbench_pair_artifacts_jailbroken_examples_cover_the_ten_categories():
    folder = shared("unsafe_responses/jailbreakbench_artifacts/attack-artifacts/PAIR/black_box")
    examples = []
    for path in sorted(folder.glob("*.json")):
        try:
            examples += load_sft(DataConfig(path=str(path), format="jailbreakbench", unsafe_only=True))
        except ValueError as e:
            # llama-2-7b-chat resisted PAIR: its file has no jailbroken response to keep.
            assert "no records left" in str(e) and "llama-2" in path.name
    groups = split_domains(examples)
    assert set(groups) == JBB_CATEGORIES
    assert all(e.safe is False and e.response for e in examples)
    assert examples[0].source.endswith(".json, row 1")


def test_jailbreakbench_artifact_skips_attacks_without_response():
    path = shared(
        "unsafe_responses/jailbreakbench_artifacts/attack-artifacts/PAIR/black_box/gpt-4-0125-preview.json"
    )
    rows = list(read_rows(str(path)))
    examples = load_sft(DataConfig(path=str(path), format="jailbreakbench"))
    assert len(rows) == 100
    assert len(examples) == sum(row["response"] is not None for _, row in rows) < 100


def test_safety_tuned_llamas():
    path = shared("safe_responses/safety_tuned_llamas_safety_only.json")
    examples = load_sft(DataConfig(path=str(path), format="safety-tuned-llamas"))
    assert len(examples) > 2000
    assert all(e.safe is True and e.prompt and e.response for e in examples)


def test_adv_training_safe_responses_via_generic_sft_columns():
    path = shared("safe_responses/adv_training_behaviors_safe_responses.csv")
    cfg = DataConfig(path=str(path), columns={"prompt": "Behavior", "response": "Safe_Response"})
    examples = load_sft(cfg)
    assert len(examples) == 100
    assert examples[0].source == f"{path}, row 1"
    assert all(e.prompt and e.response for e in examples)


def test_pyrit_refusal_scorer_csvs_skip_their_version_comment():
    folder = shared("judge_calibration/pyrit_scorer_evals/refusal_scorer")
    for path in sorted(folder.glob("*.csv")):
        rows = [row for _, row in read_rows(str(path))]
        assert rows, path
        assert list(rows[0]) == ["objective", "assistant_response", "human_score", "data_type"], path
        assert not any(key.startswith("#") for row in rows for key in row)


def test_hh_rlhf_harmless_preferences():
    path = shared("preferences/hh_rlhf_harmless_base_test.jsonl.gz")
    pairs = load_preferences(DataConfig(path=str(path), format="preference"))
    assert len(pairs) == 2312
    assert all(p.prompt and not p.prompt.startswith(("Human:", "\n")) for p in pairs)
    assert sum(p.chosen != p.rejected for p in pairs) > 2300
    assert pairs[0].source == f"{path}, line 1"
