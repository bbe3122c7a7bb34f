"""Fail unless the active environment holds exactly the versions the lock file names.

    python .ci/check_lock.py constraints-tested.txt

pip's ``-c`` only constrains what it installs; this catches a package that entered without a pin (a new
dependency missing from the lock) or a version the lock does not name. Local version labels (torch's
``+cpu``) are ignored, as pip ignores them when matching ``==``.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

IGNORED = {"pip", "setuptools", "wheel", "routealign"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_file: str) -> int:
    pinned = {}
    for number, line in enumerate(open(lock_file, encoding="utf-8"), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            print(f"{lock_file}, line {number}: expected NAME==VERSION, got {line!r}", file=sys.stderr)
            return 1
        pinned[canonical(name)] = version.strip()
    problems = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in IGNORED:
            continue
        version = dist.version.split("+", 1)[0]
        if name not in pinned:
            problems.append(f"{name}=={version} is installed but not in {lock_file}")
        elif pinned[name] != version:
            problems.append(f"{name}=={version} is installed, {lock_file} names {pinned[name]}")
    installed = {canonical(d.metadata["Name"]) for d in metadata.distributions()}
    problems += [f"{name}=={version} is in {lock_file} but not installed" for name, version in pinned.items() if name not in installed]
    for problem in sorted(problems):
        print(problem, file=sys.stderr)
    if problems:
        print("regenerate the lock deliberately: bash .ci/run-latest (see the README, 'Upgrading')", file=sys.stderr)
        return 1
    print(f"environment matches {lock_file} ({len(pinned)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
