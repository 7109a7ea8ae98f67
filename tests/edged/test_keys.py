from __future__ import annotations

import stat
from pathlib import Path

from edged.keys import COMMITMENT_KEY_FILE, SIGNING_KEY_FILE, load_or_create_keys


def test_keys_are_created_once_with_mode_0600(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = load_or_create_keys(keys_dir)
    second = load_or_create_keys(keys_dir)
    assert first.public_key == second.public_key
    assert first.commitment_key == second.commitment_key
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    for name in (SIGNING_KEY_FILE, COMMITMENT_KEY_FILE):
        assert stat.S_IMODE((keys_dir / name).stat().st_mode) == 0o600


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    load_or_create_keys(keys_dir)
    (keys_dir / SIGNING_KEY_FILE).chmod(0o644)
    load_or_create_keys(keys_dir)
    assert stat.S_IMODE((keys_dir / SIGNING_KEY_FILE).stat().st_mode) == 0o600
