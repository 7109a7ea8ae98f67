"""``docs/ARCHITECTURE.md`` stays true: every module or path it names in backticks exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
TOP_LEVEL = ("edged/", "runtimes/", "attribution/", "sync/", "tests/", "bench/", "docs/",
             "packaging/")


def named_paths(text: str) -> list[str]:
    """The backticked spans that name a path of the repository (they start with one of its
    top-level folders)."""
    return [span for span in re.findall(r"`([^`\s]+)`", text) if span.startswith(TOP_LEVEL)]


def missing(text: str) -> list[str]:
    return [path for path in named_paths(text) if not (ROOT / path).exists()]


def test_every_path_the_architecture_doc_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert len(named_paths(text)) >= 30  # the doc names the modules it speaks of
    assert missing(text) == []


def test_the_check_catches_a_path_that_is_gone() -> None:
    text = "see `edged/app.py`, `edged/no_such_module.py` and `runtimes/`; `app[KEY]` is code"
    assert named_paths(text) == ["edged/app.py", "edged/no_such_module.py", "runtimes/"]
    assert missing(text) == ["edged/no_such_module.py"]
