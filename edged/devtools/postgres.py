"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb, start, databases, stop.

Usable from pytest fixtures (see ``tests/support/postgres_fixtures.py``) and from standalone
scripts alike; this module does not import pytest::

    with PostgresCluster() as cluster:
        dsn = cluster.create_database()

The server binaries come from ``$EDGED_TEST_PG_BINDIR`` if set, else the newest
``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu), else ``PATH``; ``make test`` installs them.
PostgreSQL refuses to run as root, so under root every server command runs as the ``postgres``
system user (``setpriv``, else ``runuser``) and the cluster directory is handed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

DEBIAN_ROOT = Path("/usr/lib/postgresql")
BINDIR_VARIABLE = "EDGED_TEST_PG_BINDIR"
SERVER_PROGRAMS = ("initdb", "postgres", "pg_ctl")
SERVICE_USER = "postgres"
SUPERUSER = "postgres"
INSTALL_HINT = ("run `make test` (it installs them) or `apt-get install postgresql` "
                f"(or point ${BINDIR_VARIABLE} at a directory holding initdb, postgres, pg_ctl)")
# Environment variables that would steer libpq or the server programs somewhere else.
_FOREIGN_VARIABLES = re.compile(r"^(PG\w+|LC_\w+|LANG|LANGUAGE)$")


class PostgresError(RuntimeError):
    """The throwaway cluster could not be set up, started or stopped."""


class PostgresNotFound(PostgresError):
    """No PostgreSQL server binaries on this machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS)


def find_bindir(explicit: Path | str | None = None) -> Path:
    """The directory with initdb, postgres and pg_ctl; raises PostgresNotFound if none.

    Order: ``explicit``, ``$EDGED_TEST_PG_BINDIR``, the newest ``/usr/lib/postgresql/*/bin``,
    then ``PATH`` (Fedora, Homebrew).
    """
    chosen = explicit if explicit is not None else os.environ.get(BINDIR_VARIABLE)
    if chosen:
        bindir = Path(chosen)
        if _has_server(bindir):
            return bindir
        raise PostgresNotFound(f"no PostgreSQL server binaries ({', '.join(SERVER_PROGRAMS)}) "
                               f"in {bindir}; {INSTALL_HINT}")
    for bindir in sorted(DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True):
        if _has_server(bindir):
            return bindir
    on_path = shutil.which("initdb")
    if on_path and _has_server(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    raise PostgresNotFound(f"no PostgreSQL server binaries ({', '.join(SERVER_PROGRAMS)}) in "
                           f"{DEBIAN_ROOT}/*/bin or on PATH; {INSTALL_HINT}")


def _user_prefix() -> list[str]:
    """The command prefix that drops root to the postgres user; empty when not root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresError(f"running as root, but there is no {SERVICE_USER!r} system user to "
                            f"run PostgreSQL as (PostgreSQL refuses root); {INSTALL_HINT}"
                            ) from None
    setpriv = shutil.which("setpriv")
    if setpriv:  # execs the program itself: the pid we hold is the server's
        return [setpriv, f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", SERVICE_USER, "--"]
    raise PostgresError("running as root and neither setpriv nor runuser (util-linux) is "
                        f"available to run PostgreSQL as {SERVICE_USER!r}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no server log: {error})"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class PostgresCluster:
    """A private PostgreSQL server in a fresh temporary directory, on a free local port.

    ``durable=False`` turns off fsync, synchronous_commit and full_page_writes: much faster,
    fine for tests, wrong for benchmarks (which keep the default ``durable=True``).
    ``settings`` adds further ``-c name=value`` server settings. Nothing runs until
    :meth:`start` (or ``with``); :meth:`stop` shuts the server down and deletes the directory.
    """

    def __init__(self, *, durable: bool = True, shared_buffers: str = "64MB",
                 settings: Mapping[str, str] | None = None, bindir: Path | str | None = None,
                 base_dir: Path | str | None = None, start_timeout: float = 60.0) -> None:
        self.durable = durable
        self.shared_buffers = shared_buffers
        self.settings = dict(settings or {})
        self.bindir_choice = bindir
        self.base_dir = base_dir
        self.start_timeout = start_timeout
        self.bindir: Path | None = None
        self.directory: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None  # initdb + start + first connection
        self._prefix: list[str] = []
        self._env: dict[str, str] = {}

    # -- paths ---------------------------------------------------------------------------

    def _require_directory(self) -> Path:
        if self.directory is None:
            raise PostgresError("the cluster is not started")
        return self.directory

    @property
    def data_dir(self) -> Path:
        return self._require_directory() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._require_directory() / "socket"

    @property
    def log_file(self) -> Path:
        return self._require_directory() / "server.log"

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> PostgresCluster:
        """initdb a fresh cluster, start the server and wait until it accepts connections."""
        if self.directory is not None:
            raise PostgresError("the cluster is already started")
        began = time.monotonic()
        self.bindir = find_bindir(self.bindir_choice)
        self._prefix = _user_prefix()
        self._env = {k: v for k, v in os.environ.items() if not _FOREIGN_VARIABLES.match(k)}
        self._env["LC_ALL"] = "C"
        self.directory = Path(tempfile.mkdtemp(prefix="edged-pg-", dir=self.base_dir))
        atexit.register(self.stop)
        try:
            self._prepare_directory()
            self._initdb()
            self._launch()
        except BaseException as error:
            try:
                self.stop()
            except PostgresError as cleanup:
                error.add_note(f"and cleaning up failed too: {cleanup}")
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _prepare_directory(self) -> None:
        directory = self._require_directory()
        self.socket_dir.mkdir()
        if not self._prefix:
            return
        for path in (directory, self.socket_dir):
            shutil.chown(path, user=SERVICE_USER, group=SERVICE_USER)
        # The postgres user must reach the directory through its parents too.
        check = self._run(["test", "-w", str(directory), "-a", "-x", str(directory)])
        if check.returncode != 0:
            raise PostgresError(f"the {SERVICE_USER!r} user cannot write to {directory}; "
                                "choose a base_dir (or TMPDIR) that other users can traverse")

    def _run(self, command: Sequence[str], timeout: float = 120.0,
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._prefix, *command], cwd=self._require_directory(),
                              env=self._env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def _program(self, name: str) -> str:
        assert self.bindir is not None
        return str(self.bindir / name)

    def _initdb(self) -> None:
        done = self._run([self._program("initdb"), "-D", str(self.data_dir), "-A", "trust",
                          "-U", SUPERUSER, "-E", "UTF8", "--no-locale", "--no-sync"])
        if done.returncode != 0:
            raise PostgresError(f"initdb failed ({done.returncode}):\n{done.stdout}\n"
                                f"{done.stderr}")

    def _server_command(self, port: int) -> list[str]:
        settings = {"listen_addresses": "127.0.0.1", "shared_buffers": self.shared_buffers}
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        command = [self._program("postgres"), "-D", str(self.data_dir),
                   "-k", str(self.socket_dir), "-p", str(port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _launch(self, attempts: int = 3) -> None:
        """Start the server; pick another port if the chosen one was taken meanwhile."""
        for attempt in range(attempts):
            self.port = free_port()
            with open(self.log_file, "wb") as log:  # a fresh log per attempt
                self.process = subprocess.Popen(
                    [*self._prefix, *self._server_command(self.port)],
                    cwd=self._require_directory(), env=self._env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready()
                return
            except PostgresError:
                log_text = _tail(self.log_file)
                if self.process.poll() is None or "could not bind" not in log_text \
                        or attempt == attempts - 1:
                    raise
                self.process.wait()
                self.process = None

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise PostgresError(f"postgres exited with status {code} while starting; "
                                    f"server log tail:\n{_tail(self.log_file)}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                last_error = error
                time.sleep(0.05)
        raise PostgresError(f"postgres did not accept connections within {self.start_timeout} s "
                            f"(last error: {last_error}); server log tail:\n"
                            f"{_tail(self.log_file)}")

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``), wait for the server, delete the directory.

        Safe to call more than once, and on a cluster that failed half-way through start.
        """
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        directory, process = self.directory, self.process
        if directory is None:
            return
        problems: list[str] = []
        try:
            if process is not None and process.poll() is None:
                problems += self._shut_down(process)
            if process is not None:
                process.wait()
        finally:
            self.process = None
            self.directory = None
            shutil.rmtree(directory, ignore_errors=True)
        if problems:
            raise PostgresError("; ".join(problems))

    def _shut_down(self, process: subprocess.Popen[bytes]) -> list[str]:
        problems: list[str] = []
        try:
            done = self._run([self._program("pg_ctl"), "stop", "-D", str(self.data_dir),
                              "-m", "fast", "-w", "-t", "60"], timeout=90)
            stopped = done.returncode == 0
            # Before the server writes postmaster.pid (still starting) pg_ctl cannot find it.
            if not stopped and process.poll() is None and self.data_dir.joinpath(
                    "postmaster.pid").exists():
                problems.append(f"pg_ctl stop failed ({done.returncode}): {done.stderr.strip()}")
        except subprocess.TimeoutExpired:
            stopped = False
            problems.append("pg_ctl stop timed out")
        if not stopped and process.poll() is None:
            process.send_signal(signal.SIGINT)  # the postmaster's "fast shutdown" signal
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            problems.append("postgres did not exit after a fast shutdown; killed it")
            process.kill()
        return problems

    # -- databases -----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """The connection URL of ``dbname`` as the superuser over TCP."""
        if self.port is None or self.directory is None:
            raise PostgresError("the cluster is not started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @staticmethod
    def unique_name(prefix: str = "db") -> str:
        """A database name no other call returns: ``<prefix>_<12 hex digits>``."""
        return f"{prefix}_{uuid.uuid4().hex[:12]}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database (a unique name unless given); return its DSN."""
        name = name or self.unique_name()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any sessions still connected to it."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                               .format(sql.Identifier(name)))
