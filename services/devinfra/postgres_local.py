"""A real PostgreSQL server run from the embedded ``pgserver`` package (no system install, no root needed).

It listens on a Unix socket inside its data dir under the user's state dir, so it never clashes
with another server's TCP port. ``pgserver`` leaves the server running after this process exits;
:meth:`LocalPostgres.stop` asks the postmaster for a fast shutdown.
"""

from __future__ import annotations

import logging
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

from services.devinfra import paths
from services.devinfra.process import pid_alive, stop_pid


@dataclass(frozen=True)
class LocalPostgres:
    @property
    def data_dir(self) -> Path:
        return paths.state_dir() / "postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log"

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return pid_alive(self.pid())

    def start(self) -> tuple[str, bool]:
        """Start (or reuse) the server. Returns its libpq URL and whether this call started it."""
        was_running = self.running()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            import pgserver

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        server = pgserver.get_server(self.data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
        return str(server.get_uri()), not was_running

    def stop(self) -> bool:
        pid = self.pid()
        if not pid_alive(pid):
            return False
        assert pid is not None
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        return stop_pid(pid, sig=signal.SIGINT, timeout_s=60)
