"""Atomic writes: modes a team can share, leftovers of killed writes removed, one writer per folder."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from routealign.io import (
    CHECKSUM_KEY,
    DamagedFileError,
    FolderBusyError,
    atomic_dir,
    atomic_write_text,
    check_replaceable,
    folder_lock,
    load_safetensors,
    refuse_foreign,
    remove_stale_temps,
    save_safetensors,
    tensors_sha256,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_folders_and_files_get_ordinary_modes(tmp_path, umask_022):
    from safetensors.torch import save_file

    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_bytes(b"x")
        save_file({"w": torch.zeros(2)}, str(tmp / "w.safetensors"))  # written through a private temp file
        os.chmod(tmp / "w.bin", 0o600)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755  # not mkdtemp's 0700
    for name in ("w.bin", "w.safetensors"):
        assert stat.S_IMODE((tmp_path / "model" / name).stat().st_mode) == 0o644  # not 0600
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_a_killed_write_leaves_no_temp_behind_once_the_folder_is_written_again(tmp_path):
    stale = tmp_path / ".model.k1ll3d.tmp"
    stale.mkdir()
    (stale / "weights").write_bytes(b"\0" * 1000)
    (tmp_path / ".model.x.tmp").write_text("torn")
    other = tmp_path / ".other.y.tmp"  # another target's temp is not ours to delete
    other.mkdir()
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.y.tmp", "model"]
    assert remove_stale_temps(tmp_path / "other") == [other]


def test_a_failed_write_keeps_the_old_folder(tmp_path):
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "model" / "w").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_folder_lock_refuses_a_second_process_and_frees_on_exit(tmp_path):
    holder = textwrap.dedent(f"""
        import sys, time
        from routealign.io import folder_lock
        with folder_lock({str(tmp_path)!r}, "evaluation"):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(
            FolderBusyError, match=rf"another process is writing this folder \(evaluation, pid {proc.pid},"
        ):
            with folder_lock(tmp_path, "evaluation"):
                pass
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    with folder_lock(tmp_path, "evaluation"):  # the holder exited: the folder is free again
        pass


def test_a_killed_holder_does_not_leave_the_folder_locked(tmp_path):
    holder = f"from routealign.io import folder_lock\nimport os\nwith folder_lock({str(tmp_path)!r}):\n    os._exit(9)\n"
    assert subprocess.run([sys.executable, "-c", holder]).returncode == 9
    with folder_lock(tmp_path):
        pass


# --- the one safetensors write path ----------------------------------------------------------------------


def test_safetensors_files_get_the_umask_mode_and_leave_no_temp(tmp_path):
    old = os.umask(0o002)  # a team's group-writable umask
    try:
        save_safetensors(tmp_path / "cache" / "w.safetensors", {"w": torch.ones(3)}, checksum=True)
    finally:
        os.umask(old)
    assert (
        stat.S_IMODE((tmp_path / "cache" / "w.safetensors").stat().st_mode) == 0o664
    )  # not safetensors' 0600
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["w.safetensors"]


def test_no_module_writes_safetensors_around_the_one_write_path():
    """Every safetensors file goes through io.save_safetensors (atomic, umask modes, checksums): five
    hand-rolled copies of that gave five different bugs."""
    import routealign

    package = Path(routealign.__file__).parent
    direct = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "io.py" and ("save_file(" in p.read_text() or "torch.save(" in p.read_text())
    ]
    assert direct == []


def test_tensors_sha256_matches_a_hand_computed_digest():
    # One float32 tensor [1.0]: its name, dtype and shape as JSON, then its 4 little-endian bytes.
    expected = hashlib.sha256(
        json.dumps(["a", "torch.float32", [1]]).encode() + struct.pack("<f", 1.0)
    ).hexdigest()
    assert tensors_sha256({"a": torch.tensor([1.0])}) == expected
    # Names, dtypes and shapes are part of it, not only the bytes.
    assert tensors_sha256({"b": torch.tensor([1.0])}) != expected
    assert tensors_sha256({"a": torch.tensor([[1.0]])}) != expected
    assert tensors_sha256({"a": torch.tensor([1.0], dtype=torch.bfloat16)}) != expected


def _flip_last_data_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # in the last tensor's bytes: the file still parses
    path.write_bytes(bytes(data))


def test_a_checksum_names_a_flipped_bit_and_a_truncated_file(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = {"chosen": torch.tensor([-183.25, -12.5]), "rejected": torch.tensor([-190.0, -20.0])}
    save_safetensors(path, tensors, metadata={"pairs": "2"}, checksum=True)
    loaded, header = load_safetensors(path, checksum="required")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors) and header["pairs"] == "2"
    assert header[CHECKSUM_KEY] == tensors_sha256(tensors)
    _flip_last_data_bit(path)
    assert load_safetensors(path)[0]["rejected"][-1] != -20.0  # read without the check: silently wrong
    with pytest.raises(DamagedFileError, match=r"x.safetensors: its tensors do not match the checksum"):
        load_safetensors(path, checksum="if-present")
    save_safetensors(path, tensors, checksum=True)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DamagedFileError, match=r"x.safetensors: not a readable safetensors file"):
        load_safetensors(path, checksum="if-present")
    save_safetensors(path, tensors)  # no checksum: an older file
    assert load_safetensors(path, checksum="if-present")[0].keys() == tensors.keys()
    with pytest.raises(DamagedFileError, match="no checksum in its header"):
        load_safetensors(path, checksum="required")


# --- folders a command did not make ------------------------------------------------------------------------


def test_a_folder_with_foreign_files_is_refused_and_left_as_it_was(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(
        FolderBusyError, match=r"notes: not empty \(thesis.tex\) and not a routealign evaluation folder"
    ):
        with folder_lock(mine, "evaluation"):
            pass
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]  # no lock file left either
    refuse_foreign(tmp_path / "new", "evaluation")  # absent: fine
    (tmp_path / "empty").mkdir()
    with folder_lock(tmp_path / "empty", "evaluation"):
        (tmp_path / "empty" / "summary.json").write_text("{}")
    with folder_lock(tmp_path / "empty", "evaluation"):  # its own earlier output
        pass
    with pytest.raises(FolderBusyError, match="empty: is a routealign evaluation folder, not a training one"):
        refuse_foreign(tmp_path / "empty", "training")  # an eval folder is not a training run's
    refuse_foreign(
        mine, "training", ours=lambda f: (f / "thesis.tex").is_file()
    )  # what the caller recognises


def test_earlier_outputs_are_told_from_user_files_of_the_same_name(tmp_path, tiny_model_dir, capsys):
    """A folder with a run_config.json or summary.json that routealign did not write is still foreign."""
    from routealign.cli import main
    from routealign.evaluation.metrics import is_eval_folder
    from routealign.recipe import is_run_folder

    (tmp_path / "run_config.json").write_text('{"lr": 3}')
    (tmp_path / "summary.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "thesis.tex").write_text("years of work")
    assert not is_run_folder(tmp_path) and not is_eval_folder(tmp_path)
    assert main(["quickstart", "--retrain", "--output-dir", str(tmp_path)]) == 2  # would have deleted it
    assert "not a routealign training folder" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    (tmp_path / "run_config.json").write_text('{"recipe": "safemoe", "output_dir": "x"}')
    (tmp_path / "summary.json").write_text('{"run": {}, "benchmarks": {}}')
    assert is_run_folder(tmp_path) and is_eval_folder(
        tmp_path
    )  # as runs from before the lock named its holder


def test_a_folder_is_replaced_only_when_it_is_the_commands_own_and_the_user_asks(tmp_path):
    out = tmp_path / "out"
    check_replaceable(out, marker="moefy.json", what="moefy", overwrite=False)  # absent
    out.mkdir()
    check_replaceable(out, marker="moefy.json", what="moefy", overwrite=False)  # empty
    (out / "data.csv").write_text("a,b\n")
    for overwrite in (False, True):  # never replaced, even when asked: it is not moefy's
        with pytest.raises(
            FolderBusyError, match=r"out: not empty \(data.csv\) and not a moefy output \(no moefy.json\)"
        ):
            check_replaceable(out, marker="moefy.json", what="moefy", overwrite=overwrite)
    (out / "moefy.json").write_text("{}")
    with pytest.raises(FolderBusyError, match="holds an earlier moefy output; pass --overwrite"):
        check_replaceable(out, marker="moefy.json", what="moefy", overwrite=False)
    check_replaceable(out, marker="moefy.json", what="moefy", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderBusyError, match="is a file"):
        check_replaceable(tmp_path / "file", marker="moefy.json", what="moefy", overwrite=True)


def test_replacements_a_kill_interrupted_are_put_back_and_nothing_else_moves(tmp_path):
    """``recover_tree``: a ``.NAME.old`` folder whose ``NAME`` is gone was moved aside by a replacement
    that never finished; it goes back. One beside a finished replacement stays for its writer to delete."""
    from routealign.io import recover_tree

    (tmp_path / "experts" / ".chem.old").mkdir(parents=True)
    (tmp_path / "experts" / ".chem.old" / "adapter_config.json").write_text("{}")
    (tmp_path / ".model.old").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / ".notes.old").write_text("a file, not a folder")
    assert recover_tree(tmp_path) == [tmp_path / "experts" / "chem"]
    assert (tmp_path / "experts" / "chem" / "adapter_config.json").is_file()
    assert not (tmp_path / "experts" / ".chem.old").exists()
    assert (tmp_path / ".model.old").is_dir() and (tmp_path / ".notes.old").is_file()
    assert recover_tree(tmp_path / "missing") == []
