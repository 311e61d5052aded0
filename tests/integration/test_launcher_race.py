"""`make test` on a machine where nothing runs yet: every pytest worker asks the launcher for a
broker at the same moment. One starts it; the others wait their turn and find it running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.devinfra.kafka_local import LocalKafka
from tests.cluster.support import free_port_run

pytestmark = pytest.mark.integration

ENSURE = """
from services.config import Settings
from services.devinfra import launcher
endpoint = launcher.ensure_kafka(Settings(), print, use_docker=False)
print("ENDPOINT", endpoint.address)
"""
ROOT = Path(__file__).resolve().parents[2]


def test_processes_ensuring_a_broker_at_once_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port_run(2)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") and not key.startswith("SWITCHYARD_")
    }
    env |= {
        "XDG_STATE_HOME": str(tmp_path),
        "SWITCHYARD_DEV_KAFKA_PORT": str(port),
        "SWITCHYARD_DEV_KAFKA_CONTROLLER_PORT": str(port + 1),
    }
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # where the broker's pid file is, to stop it
    try:
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", ENSURE],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(3)
        ]
        outputs = [worker.communicate(timeout=240)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0, 0], outputs
        joined = "\n".join(outputs)
        assert joined.count("starting Kafka") == 1, joined
        assert joined.count(f"ENDPOINT 127.0.0.1:{port}") == 3, joined
    finally:
        LocalKafka(port, port + 1).stop()
