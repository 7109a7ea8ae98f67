"""The README's Quick start, run as written: every ``sh`` and ``python`` block of that
section, against a real ``edged serve`` with the demo Gemma 3 270M.

The blocks name the default address, ``127.0.0.1:3343``. So that they run unchanged
while other daemons may hold that port, the daemon and the blocks share a network
namespace of their own (root and iproute2, as the namespace sync tests need). What the
model writes is not asserted, only what edged adds: receipts, payees, evidence."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.devtools.daemon import Daemon, clean_environment

pytestmark = [pytest.mark.gemma, pytest.mark.subprocess, pytest.mark.timeout(600)]
README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_CONTRIBUTORS = {"national-archives", "library-of-congress", "shakespeare-folio",
                     "mother-goose"}
SHARE = r"(\S+) (\d+\.\d)%"
RECEIPT_LINE = re.compile(r"receipt ([0-9a-f]{64}) · seq (\d+) · fee (\d+)((?: · \S+ \d+\.\d%)+)")


def quick_start_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the Quick start section."""
    text = README.read_text()
    start = text.index("\n## Quick start\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"^```(\w*)\n(.*?)^```", text[start:end], re.M | re.S)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("the quick start test needs iproute2 and root (CI has both)")
    name = f"edged-qs-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def daemon(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """`make run`'s daemon (`.venv/bin/edged serve`, demo model on), at the default port."""
    node = Daemon(tmp_path_factory.mktemp("quickstart") / "data", port=3343, extra_args=(),
                  namespace=namespace).start(timeout=180)
    try:
        yield node
    finally:
        node.stop()


def run_block(daemon: Daemon, language: str, code: str,
              cwd: Path) -> subprocess.CompletedProcess[str]:
    # `edged` on PATH as after `. .venv/bin/activate`; the client reads the same data
    # directory's settings as the daemon (none but the defaults here).
    env = clean_environment(EDGED_DATA_DIR=str(daemon.data_dir))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = ["bash", "-e", "-o", "pipefail", "-c", code] if language == "sh" \
        else [sys.executable, "-c", code]
    assert daemon.namespace is not None
    return subprocess.run(["ip", "netns", "exec", daemon.namespace, *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def json_values(text: str) -> tuple[list[Any], str]:
    """The JSON documents printed one after another, and the text after them."""
    decoder, values, rest = json.JSONDecoder(), [], text.lstrip()
    while rest.startswith("{"):
        value, end = decoder.raw_decode(rest)
        values.append(value)
        rest = rest[end:].lstrip()
    return values, rest


def check_receipt_line(line: str) -> dict[str, float]:
    match = RECEIPT_LINE.fullmatch(line)
    assert match, line
    shares = dict(re.findall(SHARE, match.group(4)))
    assert abs(sum(float(v) for v in shares.values()) - 100) < 0.5, line
    assert "owner:google" in shares and any(k.startswith("node:") for k in shares), line
    return {k: float(v) for k, v in shares.items()}


def test_quick_start_runs_as_written(daemon: Daemon, tmp_path: Path) -> None:
    blocks = quick_start_blocks()
    runnable = [(language, code) for language, code in blocks if language in ("sh", "python")]
    assert [language for language, _ in runnable] == ["sh", "sh", "python"], blocks
    assert all("<" not in code for language, code in runnable if language == "sh")

    for language, code in runnable:
        result = run_block(daemon, language, code, tmp_path)
        assert result.returncode == 0, f"{code}\n---\n{result.stdout}\n{result.stderr}"

        if "edged run" in code:
            # Each `edged run`: a continuation on stdout, one receipt line on stderr.
            runs = [line for line in code.splitlines() if line.startswith("edged run")]
            lines = [ln for ln in result.stderr.splitlines() if ln.startswith("receipt ")]
            assert len(lines) == len(runs) and result.stdout.strip(), result.stderr
            shares = [check_receipt_line(line) for line in lines]
            # The datanet text pays its contributors the demo's 30% data share.
            data = {k.removeprefix("data:"): v for k, v in shares[-1].items()
                    if k.startswith("data:")}
            assert data and set(data) <= DEMO_CONTRIBUTORS
            assert abs(sum(data.values()) - 30) < 0.5

        elif language == "sh":
            # The completion text (stderr), the receipt, its evidence, then the verdict.
            assert result.stderr.strip()
            (receipt, evidence), rest = json_values(result.stdout)
            assert receipt["model"]["name"] == "gemma3-270m" and receipt["kind"] == "completion"
            assert receipt["fee"] > 0 and receipt["attr"]["method"] == "spans/1"
            roles = {role for _, role, _ in receipt["payees"]}
            data = {payee: ppm for payee, role, ppm in receipt["payees"] if role == "data"}
            assert roles == {"owner", "operator", "data"} and sum(data.values()) == 300_000
            spans = evidence["evidence"]["spans"]
            holders = {holder for span in spans for holder in span["by_contributor"]}
            assert spans and set(data) <= holders <= DEMO_CONTRIBUTORS
            verdict = re.fullmatch(r"(\d+) receipts, head ([0-9a-f]{64}): OK", rest.strip())
            assert verdict and int(verdict.group(1)) >= 3, rest  # two `edged run`s, this one

        else:
            # The story, its fee and payees, the streamed poem's receipt, the vector size.
            out = result.stdout
            fee = re.search(r"^fee (\d+) payees (\[\[.*\]\])$", out, re.M)
            assert fee and int(fee.group(1)) > 0, out
            assert "'owner'" in fee.group(2) and "'operator'" in fee.group(2)
            assert re.search(r"^receipt [0-9a-f]{64}$", out, re.M), out
            assert re.search(r"^640 dimensions$", out, re.M), out

    # Everything the blocks did is one intact, signed chain on the node.
    verify = daemon.cli("receipts", "verify")
    assert re.fullmatch(r"\d+ receipts, head [0-9a-f]{64}: OK", verify.stdout.strip())
