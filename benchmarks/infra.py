"""What the benchmarks need around them: Kafka, PostgreSQL, Redis, fresh databases, child processes.

Kafka and PostgreSQL come from :mod:`services.devinfra.launcher` (the environment's
``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when set, else the local launcher, exactly like
``switchyard dev up``) and are left running, as ``dev up`` would. Redis is started here from the
system's ``redis-server`` on a free loopback port, without persistence, and stopped at the end.

Every child process is started through :class:`Processes`, in its own process group, and is
stopped (SIGTERM, then SIGKILL) by :meth:`Processes.stop_all`, which :func:`install_cleanup`
also runs at interpreter exit and on SIGINT / SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from services.config import Settings
from services.devinfra import launcher

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = REPO_ROOT / "benchmarks" / "results" / "logs"


def pids_of(child: Child) -> Callable[[], list[int]]:
    """A roots function (see :mod:`benchmarks.monitor`) for one child process."""
    return lambda: [child.pid]


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    """A short unique name (topic prefixes, databases, consumer groups)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@dataclass
class Child:
    """One child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Child processes owned by the benchmark; each in its own session so a stop reaches its children."""

    children: list[Child] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT
    ) -> Child:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_file = LOG_DIR / f"{name}.log"
        with log_file.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                env=env if env is not None else dict(os.environ),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, popen, log_file)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
        """Stop one child (and its process group): ``sig``, wait, then SIGKILL."""
        if child.alive():
            _signal_group(child.popen, sig)
            try:
                child.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(child.popen, signal.SIGKILL)
                child.popen.wait(10)
        elif child.popen.returncode is not None:
            _signal_group(child.popen, signal.SIGKILL)  # leftovers of a group whose leader exited
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


PROCESSES = Processes()
_CLEANUPS: list[Callable[[], None]] = []


def on_exit(fn: Callable[[], None]) -> None:
    """Register cleanup work that runs (last registered first) at exit, Ctrl-C or SIGTERM."""
    _CLEANUPS.append(fn)


def run_cleanups() -> None:
    PROCESSES.stop_all()
    while _CLEANUPS:
        fn = _CLEANUPS.pop()
        try:
            fn()
        except Exception as exc:  # cleanup must go on
            print(f"cleanup failed: {exc!r}", file=sys.stderr)


def install_cleanup() -> None:
    """Stop every child and run the cleanups at exit, and turn SIGTERM into KeyboardInterrupt."""
    atexit.register(run_cleanups)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


# --- Kafka and PostgreSQL ----------------------------------------------------------------------


def kafka_bootstrap(progress: Callable[[str], object] = print) -> str:
    """The broker the benchmark uses (environment, else the local launcher's, started if needed)."""
    return launcher.ensure_kafka(Settings(), progress).address


def postgres_admin_url(progress: Callable[[str], object] = print) -> str:
    """A URL of the PostgreSQL server (environment, else the embedded one, started if needed)."""
    return launcher.ensure_postgres(Settings(), progress).address


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def fresh_database(admin_url: str, name: str) -> str:
    """Create database ``name`` (dropped at exit) and return its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    on_exit(drop)
    return with_dbname(admin_url, name)


# --- Redis -----------------------------------------------------------------------------------


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` binary: install it (``apt-get install redis-server``)."""


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def ensure_redis_binary(install: bool = True) -> str:
    """Find ``redis-server``; when missing and running as root, install the Debian package."""
    found = redis_binary()
    if found or not install:
        if found:
            return found
        raise RedisUnavailable("redis-server not found (apt-get install redis-server)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RedisUnavailable("redis-server not found; install it with: apt-get install redis-server")
    print("installing redis-server with apt-get (needed by the Celery baseline)")
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False)
    found = redis_binary()
    if not found:
        raise RedisUnavailable("apt-get could not install redis-server")
    return found


def start_redis(processes: Processes = PROCESSES) -> tuple[Child, str]:
    """Start a throw-away Redis on a free loopback port. Returns the child and its URL."""
    binary = ensure_redis_binary()
    port = free_port()
    child = processes.start(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return child, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"redis-server did not answer on port {port}: {child.log_tail()}")
