"""Private Kafka broker and PostgreSQL server for the scenarios that restart them.

The shared development broker and database (``switchyard dev up``) serve every other engineer's
tests, so they are never stopped here: the broker-restart scenario runs its own
:class:`PrivateKafka` (the launcher's jars, its own ports and data dir), the PostgreSQL-restart
scenario its own embedded server (``pgserver``, its own data dir). Both live under pytest's
``tmp_path`` and are stopped at the end of the test.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.devinfra.kafka_local import LocalKafka
from services.devinfra.process import pid_alive, stop_pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PrivateKafka(LocalKafka):
    """The launcher's single-node KRaft broker with its data, log and pid file under ``root``."""

    root: Path = Path()

    @property
    def home(self) -> Path:
        return self.root

    @classmethod
    def create(cls, root: Path) -> PrivateKafka:
        return cls(free_port(), free_port(), root)


@dataclass(frozen=True)
class PrivatePostgres:
    """An embedded PostgreSQL (``pgserver``) in ``data_dir``, started in a helper process.

    ``pgserver`` caches servers per data dir inside the calling process, which would make a
    restart a no-op; starting it from a short-lived helper process avoids that (the server
    outlives the helper: ``cleanup_mode=None``).
    """

    data_dir: Path

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> str:
        """Start the server (or reuse it if it runs); returns its libpq URL."""
        code = (
            "import sys, warnings, logging\n"
            "warnings.simplefilter('ignore')\n"
            "import pgserver\n"
            "logging.getLogger('pgserver').setLevel(logging.WARNING)\n"
            "print(pgserver.get_server(sys.argv[1], cleanup_mode=None).get_uri())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(self.data_dir)], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgserver failed: {out.stderr[-2000:]}")
        return out.stdout.strip().splitlines()[-1]

    def stop(self) -> float:
        """Fast shutdown (SIGINT); returns the seconds it took."""
        started = time.monotonic()
        pid = self.pid()
        if pid is not None and pid_alive(pid):
            stop_pid(pid, sig=signal.SIGINT, timeout_s=60)
        return time.monotonic() - started
