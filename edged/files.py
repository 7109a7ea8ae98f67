"""Writing a small file so that a crash leaves either the old content or the new one.

The text goes to a temporary file in the same folder, is flushed and fsynced, and then
replaces the target with one ``rename``; the folder is fsynced after, so the rename
itself survives a power cut. Manifests, datanet states and the trusted-peer list use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> os.stat_result:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably; the new file's stat
    (a rename keeps its device, inode and size, so callers may use it as an identity)."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            written = os.fstat(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return written


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
