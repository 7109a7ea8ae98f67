"""Start a real ``edged serve`` subprocess for smoke, CLI and crash tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # A node inside a network namespace: commands run under ``ip netns exec NS`` and the
    # test process reaches it only through them.
    namespace: str | None = None
    host: str = "127.0.0.1"
    # ("fleet", "serve") starts a fleet manager instead of a node.
    command: tuple[str, ...] = ("serve",)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace] if self.namespace else []

    def request_json(self, method: str, path: str, body: Any = None) -> Any:
        """One HTTP request to the daemon (from inside its namespace if it has one)."""
        api_key = self.env.get("EDGED_API_KEYS", "").split(",")[0]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if not self.namespace:
            response = httpx.request(method, self.url + path, json=body, headers=headers,
                                     timeout=30)
            return {"status": response.status_code, "body": response.json()}
        script = ("import httpx, json, sys; r = httpx.request(sys.argv[1], sys.argv[2], "
                  "json=json.loads(sys.argv[3]), headers=json.loads(sys.argv[4]), timeout=30);"
                  " print(json.dumps({'status': r.status_code, 'body': r.json()}))")
        result = subprocess.run(
            [*self._prefix, sys.executable, "-c", script, method, self.url + path,
             json.dumps(body), json.dumps(headers)], capture_output=True, text=True,
            timeout=60, env=self.env)
        if result.returncode != 0:
            raise httpx.ConnectError(result.stderr[-500:])
        return json.loads(result.stdout)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"edged-{self.port}.log"

    def start(self, timeout: float = 60.0) -> Daemon:
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        host_args = ["--host", self.host] if self.host != "127.0.0.1" else []
        self.process = subprocess.Popen(
            [*self._prefix, *EDGED, "--data-dir", str(self.data_dir), *self.command, "--port",
             str(self.port), *host_args, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edged exited with {self.process.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                if self.request_json("GET", "/readyz")["status"] == 200:
                    return self
            except (httpx.HTTPError, ValueError):
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
            [*self._prefix, *EDGED, "--data-dir", str(self.data_dir), "--url", self.url, *args],
            capture_output=True, text=True, env=self.env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"edged {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result
