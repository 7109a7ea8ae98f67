"""The repository depends on nothing outside it: no tracked file names a folder beyond it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Spelled in pieces so that this file does not match itself.
SHARED_SIBLING = ".." + "/shared"
# Absolute folders that are never part of a checkout: the build workspace and home folders.
OUTSIDE_PREFIXES = ("/" + "work/", "/" + "root/", "/" + "home/")


def tracked_files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.fail("the self-containment check needs a git checkout to list tracked files")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # deleted in the work tree, not yet committed
        return None
    if b"\0" in data[:4096]:
        return None
    return data.decode("utf-8", errors="replace")


def references_outside(text: str, parent: str) -> list[str]:
    found = []
    if SHARED_SIBLING in text:
        found.append(SHARED_SIBLING)
    for prefix in OUTSIDE_PREFIXES:
        if re.search(r"(?<![\w.~-])" + re.escape(prefix), text):
            found.append(prefix)
    if parent != "/" and re.search(re.escape(parent) + r"(?![\w.-])", text):
        found.append(parent)
    return found


def test_no_tracked_file_refers_outside_the_repository() -> None:
    parent = str(ROOT.parent)
    offenders = {}
    for path in tracked_files():
        text = text_of(path)
        if text is None:
            continue
        found = references_outside(text, parent)
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_check_catches_what_it_looks_for() -> None:
    assert references_outside(f"see {SHARED_SIBLING}/DESIGN.md", "/srv") == [SHARED_SIBLING]
    workspace = OUTSIDE_PREFIXES[0]
    assert references_outside(f'Path("{workspace}shared/testdata")', "/srv") == [workspace]
    assert references_outside("cd /srv/x && make", "/srv") == ["/srv"]
    assert references_outside("ls /usr/lib/postgresql/*/bin", "/srv") == []
    assert references_outside("~/.cache/pip under $HOME", "/srv") == []


def test_rfc6962_vectors_ship_with_their_source_and_licence() -> None:
    vectors = ROOT / "tests" / "data" / "rfc6962"
    assert (vectors / "SOURCE.md").is_file()
    assert "Apache License" in (vectors / "LICENSE").read_text()
    assert sorted((vectors / "inclusion").rglob("*.json"))
    assert sorted((vectors / "consistency").rglob("*.json"))
