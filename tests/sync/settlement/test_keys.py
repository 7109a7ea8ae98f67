"""The operator account's key file, and the error without the `fleet` extra."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sync.settlement.errors import SettlementError
from sync.settlement.keys import create_account_key, load_account_key
from tests.support.anvil import REPO_ROOT, write_key_file

# --- key files ---------------------------------------------------------------------------------


def test_create_account_key_writes_a_0600_file(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        address = create_account_key(tmp_path / "fresh.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "fresh.key").stat().st_mode) == 0o600
    assert load_account_key(tmp_path / "fresh.key").address == address
    assert address.startswith("0x") and len(address) == 42
    with pytest.raises(FileExistsError):
        create_account_key(tmp_path / "fresh.key")
    assert load_account_key(tmp_path / "fresh.key").address == address


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_files_open_to_group_or_others_are_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "loose.key"
    create_account_key(path)
    path.chmod(mode)
    with pytest.raises(SettlementError, match="chmod 600") as caught:
        load_account_key(path)
    assert f"{mode:04o}" in str(caught.value)


def test_a_file_without_a_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "bad.key", "0xnot-a-key-but-a-secret")
    with pytest.raises(SettlementError, match="does not hold") as caught:
        load_account_key(path)
    assert "secret" not in str(caught.value)


def test_without_the_fleet_extra_the_error_says_what_to_install(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['web3'] = None\n"
              "from pathlib import Path\n"
              "from sync.settlement import adapter as settlement\n"
              "try:\n"
              "    settlement.create_account_key(Path(sys.argv[1]))\n"
              "except settlement.SettlementError as exc:\n"
              "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr
    assert "pip install 'edged[fleet]'" in done.stdout
    assert not (tmp_path / "k").exists()
