"""The CLI's one table printer and one daemon-error path (``edged/cli/common.py``).

Each table command runs against canned daemon answers and must print, to the character,
what the command's own f-strings printed before it used ``print_table``; the expected
lines below are those f-strings, kept verbatim.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from edged.cli import datanet, fleet
from edged.cli import models as models_cli
from edged.cli import receipts as receipts_cli
from edged.cli.client import DaemonError
from edged.cli.common import Column, daemon_errors, print_table
from edged.cli.main import main
from edged.devtools.daemon import free_port
from edged.errors import EdgedError

LONG = "a-name-much-longer-than-any-column-of-the-table-is-wide"


def answering(monkeypatch: pytest.MonkeyPatch, module: Any, answers: dict[str, Any]) -> None:
    """Make ``module.call_daemon`` answer GET ``path`` with ``answers[path]``."""

    def fake(ctx: click.Context, method: str, path: str, **kwargs: Any) -> Any:
        assert method == "GET"
        return answers[path]

    monkeypatch.setattr(module, "call_daemon", fake)


def run_cli(tmp_path: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_print_table_pads_each_cell_by_its_column(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([Column("A", "<4"), Column("B", ">3", gap="  "), Column("C")],
                [("x", 1, "free text"), (LONG, 12345, "")])
    assert capsys.readouterr().out.splitlines() == [
        "A       B C", "x       1 free text", f"{LONG}  12345 "]
    print_table([Column("A", "<4")], [("x",)], header=False)
    assert capsys.readouterr().out == "x   \n"
    with pytest.raises(ValueError):  # a row with a cell too few is a bug, not a short line
        print_table([Column("A"), Column("B")], [("x",)])


def test_models_list_and_ps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    models = [
        {"name": "tiny", "runtime": "llama.cpp", "size": 123_456_789, "loaded": True,
         "memory_bytes": 98_765_432, "slots": {"busy": 1, "total": 4, "queued": 2},
         "expires_at": None, "processor": "cpu", "gpu_layers": 0},
        {"name": LONG, "runtime": "onnxruntime", "size": 12_345_678_901_234, "loaded": True,
         "memory_bytes": 12_345_678_901_234, "expires_at": now - 1,
         "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
         "gpu_layers": 12, "layers": 24, "device_memory_bytes": 4_000_000_000},
        {"name": "cold", "runtime": "llama.cpp", "size": 1, "loaded": False},
    ]
    answering(monkeypatch, models_cli, {"/api/models": {"models": models}})

    expected = []
    for model in models:
        state = "loaded" if model["loaded"] else "-"
        expected.append(f"{model['name']:<32} {model['runtime']:<10} "
                        f"{model['size'] / 1e6:>9.1f} MB  {state}")
    assert run_cli(tmp_path, "models", "list") == expected

    shown = run_cli(tmp_path, "ps")
    assert shown[0] == (f"{'NAME':<28} {'SIZE':>10}  {'PROCESSOR':<22} {'GPU':<18} "
                        f"{'SLOTS':<9} UNTIL")
    assert shown[1:] == [
        f"{'tiny':<28} {98_765_432 / 1e6:>7.1f} MB  {'cpu':<22} {'-':<18} {'1/4+2':<9} forever",
        f"{LONG:<28} {12_345_678_901_234 / 1e6:>7.1f} MB  "
        f"{'CUDAExecutionProvider, CPUExecutionProvider':<22} {'12/24 layers 4000 MB':<18} "
        f"{'0/0':<9} now",
    ]


def test_receipts_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receipts = [{"seq": 7, "id": "ab" * 32, "kind": "chat", "model": {"name": "tiny"}, "fee": 30},
                {"seq": 123_456_789, "id": "r", "kind": "a-long-kind-name",
                 "model": {"name": LONG}, "fee": 0}]
    answering(monkeypatch, receipts_cli, {"/v1/receipts": {"data": receipts}})
    assert run_cli(tmp_path, "receipts", "list") == [
        f"{receipt['seq']:>8}  {receipt['id']}  {receipt['kind']:<10} "
        f"{receipt['model']['name']:<24} fee {receipt['fee']}" for receipt in receipts]


def test_datanet_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    states = [{"name": "books", "documents": 3, "bytes": 1200, "contributors": ["a", "b"]},
              {"name": LONG, "documents": 1_234_567_890, "bytes": 98_765_432_109_876,
               "contributors": [str(i) for i in range(123_456)]}]
    answering(monkeypatch, datanet, {"/api/datanets": {"datanets": states}})
    assert run_cli(tmp_path, "datanet", "list") == [
        f"{state['name']:<32} {state['documents']:>8} docs {state['bytes']:>12} "
        f"bytes {len(state['contributors']):>5} contributors" for state in states]


def test_fleet_nodes_and_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [{"node": "f" * 64, "label": "a label longer than sixteen", "size": 12,
              "revoked_ms": None, "frozen": False, "lag_ms": 1500},
             {"node": "e" * 64, "label": "", "size": 12_345_678_901, "revoked_ms": 5,
              "frozen": True, "lag_ms": None}]
    epochs = [{"epoch": 1, "receipts": 10, "total": 300, "settlement": "settled 0xabc"},
              {"epoch": 1_234_567, "receipts": 12_345_678_901, "total": 10**20,
               "settlement": "-"}]
    calls: list[bool] = []

    def fake(ctx: click.Context, method: str, path: str, *, fleet: bool = False,
             **kwargs: Any) -> Any:
        calls.append(fleet)
        return {"/fleet/nodes": {"nodes": nodes}, "/fleet/epochs": {"epochs": epochs}}[path]

    monkeypatch.setattr(fleet, "call_daemon", fake)

    expected = [f"{'NODE':18} {'LABEL':16} {'RECEIPTS':>9} {'LAG':>9}  STATE"]
    for node in nodes:
        state = "revoked" if node["revoked_ms"] else "frozen" if node["frozen"] else "active"
        lag = "-" if node["lag_ms"] is None else f"{node['lag_ms'] / 1000:.1f}s"
        expected.append(f"{node['node'][:16]:18} {node['label'][:16]:16} {node['size']:>9} "
                        f"{lag:>9}  {state}")
    assert run_cli(tmp_path, "fleet", "nodes") == expected

    assert run_cli(tmp_path, "fleet", "epochs") == [
        f"{'EPOCH':>6} {'RECEIPTS':>9} {'TOTAL':>14}  SETTLEMENT",
        *(f"{item['epoch']:>6} {item['receipts']:>9} {item['total']:>14}  {item['settlement']}"
          for item in epochs)]
    assert calls == [True, True]  # the fleet commands ask the fleet manager, not the node


def test_daemon_errors_become_the_clis_one_line_error() -> None:
    with pytest.raises(click.ClickException) as caught, daemon_errors():
        raise DaemonError("404 not_found: no such model")
    assert caught.value.message == "404 not_found: no such model"
    assert caught.value.__suppress_context__  # no "during handling" chain in a traceback
    with pytest.raises(KeyError), daemon_errors():  # only the daemon's errors are its
        raise KeyError("bug")


def test_daemon_error_is_an_edged_error() -> None:
    error = DaemonError("cannot reach the daemon")
    assert isinstance(error, EdgedError)
    assert str(error) == error.message == "cannot reach the daemon"
    assert error.body()["error"]["code"] == "daemon_error"


@pytest.mark.parametrize("args", [("models", "list"), ("fleet", "nodes"), ("datanet", "list")])
def test_an_unreachable_daemon_is_reported_not_raised(tmp_path: Path,
                                                      args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "--url", url, *args])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach the daemon at {url}")
    assert result.exception is not None and isinstance(result.exception, SystemExit)

