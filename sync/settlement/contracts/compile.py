"""Compile ``EdgedSettlement.sol`` with the pinned solc-js and write the committed artifact.

Usage::

    python -m sync.settlement.contracts.compile          # (re)write EdgedSettlement.json
    python -m sync.settlement.contracts.compile --check  # exit 1 when the artifact is stale

The compiler is the npm package ``solc`` (solc-js) from the repository's ``node_modules``
(``npm ci`` installs it; ``make test`` does too), run by ``node`` with standard JSON input.
Everything that changes the bytecode is pinned here: the compiler version, the EVM version
and the optimizer settings, and the source is given under its bare file name so that the
metadata hash embedded in the bytecode does not depend on where the checkout lives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sync.settlement.contracts import ARTIFACT_FILE, CONTRACT_NAME, SOURCE_FILE

PINNED_COMPILER = "0.8.28"
EVM_VERSION = "paris"
OPTIMIZER: dict[str, Any] = {"enabled": True, "runs": 200}

HERE = Path(__file__).resolve().parent
SOURCE_PATH = HERE / SOURCE_FILE
ARTIFACT_PATH = HERE / ARTIFACT_FILE
REPO_ROOT = HERE.parents[2]
SOLC_PACKAGE = REPO_ROOT / "node_modules" / "solc"
COMPILE_TIMEOUT_S = 120.0

# Reads standard JSON on stdin, writes {"version", "output"} on stdout. The module path of
# solc is the last argument (node puts `-e` arguments after argv[0]).
_NODE_SCRIPT = """
const solc = require(process.argv[process.argv.length - 1]);
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({version: solc.version(), output: output}));
});
"""


class CompileError(RuntimeError):
    """The contract could not be compiled (no node, no solc-js, a compiler error)."""


def standard_json_input(source: str) -> dict[str, Any]:
    """solc standard JSON input for ``source`` with the pinned settings."""
    return {
        "language": "Solidity",
        "sources": {SOURCE_FILE: {"content": source}},
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": dict(OPTIMIZER),
            "outputSelection": {SOURCE_FILE: {CONTRACT_NAME: ["abi", "evm.bytecode.object"]}},
        },
    }


def _run_solc(compiler_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        raise CompileError("`node` is not on PATH; install Node.js, then run `npm ci`")
    if not (SOLC_PACKAGE / "package.json").is_file():
        raise CompileError(f"solc-js is not installed under {SOLC_PACKAGE}; "
                           "run `npm ci` (or `make test`) in the repository root")
    try:
        done = subprocess.run(
            [node, "-e", _NODE_SCRIPT, str(SOLC_PACKAGE)],
            input=json.dumps(compiler_input), capture_output=True, text=True,
            timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CompileError(f"solc-js did not finish in {COMPILE_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise CompileError(f"solc-js failed (exit {done.returncode}): {done.stderr.strip()}")
    answer = json.loads(done.stdout)
    return str(answer["version"]), answer["output"]


def compile_contract(source_path: Path = SOURCE_PATH) -> dict[str, Any]:
    """Compile the contract and return the artifact (keys in their committed order).

    Raises :class:`CompileError` when the compiler is not the pinned version or reports an
    error or a warning (the committed contract compiles cleanly).
    """
    source_bytes = source_path.read_bytes()
    version, output = _run_solc(standard_json_input(source_bytes.decode("utf-8")))
    if not version.startswith(PINNED_COMPILER + "+"):
        raise CompileError(f"solc-js is {version}, the contract is pinned to {PINNED_COMPILER}; "
                           "run `npm ci` to install the pinned compiler")
    problems = [item.get("formattedMessage") or item.get("message", "")
                for item in output.get("errors", [])
                if item.get("severity") in ("error", "warning")]
    if problems:
        raise CompileError("solc reported:\n" + "\n".join(str(p).rstrip() for p in problems))
    try:
        compiled = output["contracts"][SOURCE_FILE][CONTRACT_NAME]
    except KeyError as exc:
        raise CompileError(f"solc produced no {CONTRACT_NAME} contract") from exc
    return {
        "contract": CONTRACT_NAME,
        "compiler": version,
        "evmVersion": EVM_VERSION,
        "optimizer": dict(OPTIMIZER),
        "sourceSha256": hashlib.sha256(source_bytes).hexdigest(),
        "abi": compiled["abi"],
        "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
    }


def render(artifact: dict[str, Any]) -> str:
    """The artifact's committed text: JSON, indent 2, keys in insertion order, final newline."""
    return json.dumps(artifact, indent=2, ensure_ascii=False) + "\n"


def check(artifact_path: Path | None = None, source_path: Path | None = None) -> str | None:
    """None when the artifact equals a fresh compile of the source, else what differs.

    The paths default to the committed ``EdgedSettlement.json`` and ``EdgedSettlement.sol``.
    """
    artifact_path = ARTIFACT_PATH if artifact_path is None else artifact_path
    fresh = render(compile_contract(SOURCE_PATH if source_path is None else source_path))
    try:
        committed = artifact_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{artifact_path.name} is missing"
    if committed == fresh:
        return None
    try:
        old = json.loads(committed)
    except ValueError:
        return f"{artifact_path.name} is not valid JSON"
    new = json.loads(fresh)
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if not changed:
        return f"{artifact_path.name} differs from a fresh compile in formatting only"
    return f"{artifact_path.name} differs from a fresh compile in: {', '.join(changed)}"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sync.settlement.contracts.compile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare the committed artifact with a fresh compile; write nothing")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problem = check()
            if problem is not None:
                print(f"error: {problem}; {SOURCE_FILE} and the committed artifact are out of "
                      "sync: run `python -m sync.settlement.contracts.compile` and commit the "
                      "result",
                      file=sys.stderr)
                return 1
            print(f"{ARTIFACT_FILE} matches a fresh compile of {SOURCE_FILE}")
            return 0
        ARTIFACT_PATH.write_text(render(compile_contract()), encoding="utf-8")
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {ARTIFACT_PATH.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
