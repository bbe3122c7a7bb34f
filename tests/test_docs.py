"""The documentation stays true: every file is where the layout page says, every link resolves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "docs" / "layout.md"


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [line for line in out.splitlines() if line and (ROOT / line).exists()]


def listed_files() -> list[str]:
    """The paths the layout page lists; an entry with a ``*`` stands for the files it matches."""
    block = LAYOUT.read_text(encoding="utf-8").split("```")[1]
    listed = []
    for entry in (line.split()[0] for line in block.splitlines() if line.strip()):
        matches = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(entry)) if "*" in entry else [entry]
        listed += matches or [entry]
    return listed


def test_the_layout_page_lists_every_file_and_only_files_that_exist():
    listed = listed_files()
    assert len(listed) == len(set(listed)), "a file is listed twice"
    tracked = set(tracked_files()) - {".gitignore"}
    assert sorted(tracked - set(listed)) == []
    assert sorted(f for f in listed if not (ROOT / f).exists()) == []


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "experiments").glob("*/README.md"))])  # fmt: skip
def test_every_relative_link_resolves(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [t for t in targets if "://" not in t]
    missing = [t for t in relative if not ((ROOT / page).parent / t).exists()]
    assert missing == []


def test_every_test_the_promises_page_names_exists():
    named = re.findall(r"`(tests/test_\w+\.py)::(\w+)`", (ROOT / "docs" / "promises.md").read_text())
    assert len(named) >= 20
    missing = [f"{f}::{name}" for f, name in named if f"\ndef {name}(" not in (ROOT / f).read_text()]
    assert missing == []
