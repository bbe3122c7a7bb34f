"""Atomic writes: modes a team can share, leftovers of killed writes removed, one writer per folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from routealign.io import FolderBusyError, atomic_dir, atomic_write_text, folder_lock, remove_stale_temps


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
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError, match=rf"another process is writing this folder \(evaluation, pid {proc.pid},"):
            with folder_lock(tmp_path):
                pass
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    with folder_lock(tmp_path):  # the holder exited: the folder is free again
        pass


def test_a_killed_holder_does_not_leave_the_folder_locked(tmp_path):
    holder = f"from routealign.io import folder_lock\nimport os\nwith folder_lock({str(tmp_path)!r}):\n    os._exit(9)\n"
    assert subprocess.run([sys.executable, "-c", holder]).returncode == 9
    with folder_lock(tmp_path):
        pass
