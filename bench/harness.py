"""What the daemon benchmarks share: an ``edged serve`` subprocess and small helpers."""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The bench cannot go on; main() prints the message (and edged's log tail) to stdout."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the header of a result table."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


class ServerProcess:
    """A server subprocess (``process``) logging to ``log_path``: what benches share."""

    process: subprocess.Popen[bytes] | None
    log_path: Path

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @staticmethod
    def environment(**settings: str) -> dict[str, str]:
        """This environment without the caller's EDGED_* settings, plus ``settings``;
        quiet logs, and the repository importable (benches import ``edged.devtools``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        env["EDGED_LOG_LEVEL"] = "warning"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return {**env, **settings}

    def launch(self, args: list[str], env: dict[str, str], ready: Callable[[], bool],
               timeout: float, name: str) -> None:
        """Start ``args`` and wait until ``ready()`` (which returns False while the server
        cannot answer yet)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{name} exited with {self.process.returncode}:\n"
                                 + self.log_tail())
            if ready():
                return
            time.sleep(0.1)
        raise BenchError(f"{name} did not become ready in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # aiohttp's run_app exits cleanly on SIGTERM
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Daemon(ServerProcess):
    """``python -m edged serve`` in a subprocess, logging to a file in its temp dir.

    ``--keep-alive -1``: a bench may idle longer than the default unload delay (indexing,
    baselines), and a reload would land in a timed run."""

    def __init__(self, base: Path, threads: int, demo: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        self.data_dir = base / "data"
        self.log_path = base / "edged.log"
        self.port = free_port()
        self.threads = threads
        self.demo = demo
        self.settings = settings or {}  # extra EDGED_* environment, e.g. EDGED_PARALLEL
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600.0) -> None:
        env = self.environment(**self.settings)
        args = [sys.executable, "-m", "edged", "--data-dir", str(self.data_dir), "serve",
                "--port", str(self.port), "--threads", str(self.threads), "--keep-alive", "-1"]
        if not self.demo:
            args.append("--no-demo-model")
        self.launch(args, env, self._ready, timeout, "edged")

    def _ready(self) -> bool:
        try:
            return bool(self.request("GET", "/readyz", timeout=2)[0] == 200)
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def timed_stream(self, model: str, prompt: str,
                     max_tokens: int) -> tuple[list[tuple[float, dict[str, Any]]], float]:
        """One greedy streaming completion read by a lean ``http.client`` reader:
        ``([(seconds since the request, event), ...], seconds until [DONE])``."""
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                           "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        events: list[tuple[float, dict[str, Any]]] = []
        try:
            start = time.perf_counter()
            conn.request("POST", "/v1/completions", body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise BenchError(f"edged answered {response.status}: {response.read()[:500]!r}")
            while line := response.readline():
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise BenchError(f"edged stream failed: {event['error']}")
                events.append((time.perf_counter() - start, event))
            done = time.perf_counter() - start
        finally:
            conn.close()
        return events, done

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str | None = None, timeout: float = 600) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            kind = content_type or ("application/octet-stream" if raw is not None
                                    else "application/json")
            conn.request(method, path, body=data, headers={"Content-Type": kind})
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload else None
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, answer = self.request(method, path, body, **kwargs)
        if status >= 300:
            raise BenchError(f"{method} {path} answered {status}: {answer}")
        return answer
