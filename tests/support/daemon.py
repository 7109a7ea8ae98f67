"""Start a real ``edged serve`` subprocess for smoke, CLI and crash tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

EDGED = [sys.executable, "-m", "edged"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without the caller's EDGED_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    return {**env, "EDGED_LOG_LEVEL": "debug", **extra}


@dataclass
class Daemon:
    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ("--no-demo-model",)
    env: dict[str, str] = field(default_factory=clean_environment)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"edged-{self.port}.log"

    def start(self, timeout: float = 60.0) -> Daemon:
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*EDGED, "--data-dir", str(self.data_dir), "serve", "--port", str(self.port),
             *self.extra_args], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edged exited with {self.process.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("edged did not become ready")

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ``edged`` client command against this daemon."""
        result = subprocess.run(
            [*EDGED, "--data-dir", str(self.data_dir), "--url", self.url, *args],
            capture_output=True, text=True, env=self.env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"edged {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result
