"""Raw rows from files and `datasets`: every reader, and every bad input named by file, row and field."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from routealign.data import DataError, read_rows, resolve_path


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(path: Path, rows: list) -> str:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def rows_of(path: str, **kwargs) -> list[tuple[str, dict]]:
    return list(read_rows(path, **kwargs))


# --- resolve_path ---------------------------------------------------------------------------------------


def test_resolve_package_path_points_into_data_files():
    resolved = Path(resolve_path("routealign://quickstart/demo.jsonl"))
    assert resolved.parts[-3:] == ("data_files", "quickstart", "demo.jsonl")
    assert resolved.parent.parent.parent.name == "routealign"


def test_resolve_expands_home_and_leaves_other_strings():
    assert resolve_path("~/x.jsonl") == os.path.expanduser("~/x.jsonl")
    assert resolve_path("PKU-Alignment/BeaverTails") == "PKU-Alignment/BeaverTails"
    assert resolve_path("data/x.csv") == "data/x.csv"


# --- JSONL ------------------------------------------------------------------------------------------------


def test_jsonl_counts_physical_lines_and_skips_blanks(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"a": 1}\n\n   \n{"a": 2}\n')
    assert rows_of(path) == [(f"{path}, line 1", {"a": 1}), (f"{path}, line 4", {"a": 2})]


def test_jsonl_gz(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n{"a": 2}\n')
    assert [row for _, row in rows_of(str(path))] == [{"a": 1}, {"a": 2}]


def test_jsonl_invalid_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"a": 1}\n{"a": 2}\n{"a": \n')
    with pytest.raises(DataError, match=r"x\.jsonl, line 3: not valid JSON"):
        rows_of(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert str(info.value) == f"{path}, line 2: expected a JSON object, got a list"


# --- JSON -------------------------------------------------------------------------------------------------


def test_json_list_of_objects(tmp_path):
    path = write(tmp_path / "x.json", json.dumps([{"a": 1}, {"a": 2}]))
    assert rows_of(path) == [(f"{path}, row 1", {"a": 1}), (f"{path}, row 2", {"a": 2})]


def test_json_list_of_strings_becomes_text_rows(tmp_path):
    path = write(tmp_path / "x.json", json.dumps(["first", "second"]))
    assert [row for _, row in rows_of(path)] == [{"text": "first"}, {"text": "second"}]


def test_json_object_wrapping_one_list_of_strings(tmp_path):
    path = write(tmp_path / "I-CoNa.json", json.dumps({"instructions": ["q1", "q2"]}))
    assert [row for _, row in rows_of(path)] == [{"text": "q1"}, {"text": "q2"}]


def test_json_jailbreakbench_artifact_uses_the_jailbreaks_list(tmp_path):
    artifact = {
        "parameters": {"method": "PAIR", "model": "vicuna", "method_parameters": {"n-iter": 3}},
        "jailbreaks": [{"index": 0, "goal": "g0"}, {"index": 1, "goal": "g1"}],
    }
    path = write(tmp_path / "vicuna.json", json.dumps(artifact))
    assert [row["goal"] for _, row in rows_of(path)] == ["g0", "g1"]


def test_json_gz(tmp_path):
    path = tmp_path / "x.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump([{"a": 1}], f)
    assert [row for _, row in rows_of(str(path))] == [{"a": 1}]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (42, "expected a JSON list of rows, got a number"),
        ({"a": [{"x": 1}], "b": [{"y": 2}]}, "several lists of rows (a, b)"),
        ({"meta": {"x": 1}}, "an object holding one list of rows (keys: meta)"),
    ],
)
def test_json_documents_without_one_row_list(tmp_path, document, message):
    path = write(tmp_path / "x.json", json.dumps(document))
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_json_bad_item_names_its_row(tmp_path):
    path = write(tmp_path / "x.json", json.dumps([{"a": 1}, 7]))
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert str(info.value) == f"{path}, row 2: expected an object or a string, got a number"


def test_json_syntax_error_names_file_and_position(tmp_path):
    path = write(tmp_path / "x.json", '[{"a": 1},\n {"a": }]')
    with pytest.raises(DataError, match=r"x\.json: not valid JSON \(.* line 2, column"):
        rows_of(path)


# --- CSV / TSV / TXT --------------------------------------------------------------------------------------


def test_csv_skips_leading_comment_lines_only(tmp_path):
    text = (
        "# dataset_version=1.0\n"
        "# a second comment\n"
        "objective,assistant_response,human_score\n"
        'Say hi,"Hi.\n# not a comment: inside a quoted answer",1\n'
        "Say bye,Bye,0\n"
    )
    path = write(tmp_path / "refusal.csv", text)
    rows = rows_of(path)
    assert [where for where, _ in rows] == [f"{path}, row 1", f"{path}, row 2"]
    assert rows[0][1] == {
        "objective": "Say hi",
        "assistant_response": "Hi.\n# not a comment: inside a quoted answer",
        "human_score": "1",
    }


def test_csv_byte_order_mark_does_not_rename_first_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("\ufeffprompt,response\np,r\n".encode())
    assert [row for _, row in rows_of(str(path))] == [{"prompt": "p", "response": "r"}]


def test_tsv(tmp_path):
    path = write(tmp_path / "x.tsv", "prompt\tresponse\np, with comma\tr\n")
    assert [row for _, row in rows_of(path)] == [{"prompt": "p, with comma", "response": "r"}]


def test_csv_row_with_surplus_cells_names_row(tmp_path):
    path = write(tmp_path / "x.csv", "prompt,response\na,b\nc,d,e\n")
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert str(info.value) == f"{path}, row 2: 3 cells but the header has 2 (prompt, response)"


def test_txt_one_row_per_non_empty_line(tmp_path):
    path = write(tmp_path / "x.txt", "first\n\n  second  \n")
    assert rows_of(path) == [(f"{path}, line 1", {"text": "first"}), (f"{path}, line 3", {"text": "second"})]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "response": "r"}]), path)
    assert rows_of(path) == [(f"{path}, row 1", {"prompt": "p", "response": "r"})]


# --- unreadable and missing files -----------------------------------------------------------------------


def test_truncated_gzip_names_file(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    whole = gzip.compress(b'{"a": 1}\n' * 100)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"x\.jsonl\.gz: cannot read"):
        rows_of(str(path))


def test_wrong_encoding_names_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"x\.csv: cannot read \(UnicodeDecodeError"):
        rows_of(str(path))


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.json.gz", "missing.csv", "missing.txt"])
def test_missing_file_with_known_suffix(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: file not found"


def test_missing_relative_path_is_not_sent_to_the_hub():
    with pytest.raises(DataError, match=r"^\./no/such/folder: file not found$"):
        read_rows("./no/such/folder")


def test_missing_package_file_shows_both_names():
    with pytest.raises(
        DataError, match=r"^routealign://nope\.jsonl \(→ .*data_files.*nope\.jsonl\): file not found$"
    ):
        read_rows("routealign://nope.jsonl")


def test_unsupported_suffix(tmp_path):
    path = write(tmp_path / "x.xml", "<rows/>")
    with pytest.raises(DataError, match=r"x\.xml: unsupported file type \(known: \.jsonl"):
        read_rows(path)


# --- `datasets`: folders and hub names --------------------------------------------------------------------


def test_local_folder_goes_through_load_dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    jsonl(folder / "train.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    rows = rows_of(str(folder))
    assert rows == [
        (f"{folder}, split train, row 1", {"prompt": "a"}),
        (f"{folder}, split train, row 2", {"prompt": "b"}),
    ]


def test_saved_dataset_folder_goes_through_load_from_disk(tmp_path):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "a"}])}).save_to_disk(
        tmp_path / "saved"
    )
    assert [row for _, row in rows_of(str(tmp_path / "saved"), split="test")] == [{"prompt": "a"}]


def test_folder_with_unknown_split_names_folder_and_split(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    jsonl(folder / "train.jsonl", [{"prompt": "a"}])
    with pytest.raises(DataError, match=r"ds: could not load local dataset folder \(split='nope'\)"):
        rows_of(str(folder), split="nope")


def test_hub_failure_names_the_data_set_and_the_network(monkeypatch):
    import datasets

    calls = []

    def offline(name, subset=None, split=None):
        calls.append((name, subset, split))
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as info:
        rows_of("PKU-Alignment/BeaverTails", split="30k_train", subset="default")
    assert calls == [("PKU-Alignment/BeaverTails", "default", "30k_train")]
    message = str(info.value)
    assert message.startswith("PKU-Alignment/BeaverTails: could not load Hugging Face hub data set")
    assert "split='30k_train'" in message and "needs network access" in message


def test_hub_rows_are_numbered_with_split(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, split=None: [{"q": 1}, {"q": 2}])
    assert [where for where, _ in rows_of("org/set", split="test")] == [
        "org/set, split test, row 1",
        "org/set, split test, row 2",
    ]
