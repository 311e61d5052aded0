"""The local broker's start when something else holds its ports: used if it answers as a broker,
else a clear error — never a second broker that dies on the first one's ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devinfra.kafka_local import LauncherError, LocalKafka, port_taken


class _Impatient(LocalKafka):
    def ready_timeout_s(self) -> float:
        return 0.5


@pytest.fixture
def listener() -> Iterator[int]:
    """A plain TCP listener (not a broker) on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_port_taken_sees_a_listener_and_not_a_free_port(listener: int) -> None:
    assert port_taken(listener)
    assert not port_taken(_free_port())


def test_a_foreign_listener_on_the_ports_is_a_clear_error_and_nothing_starts(
    listener: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # no pid file: "not ours"
    kafka = _Impatient(listener, _free_port())
    with pytest.raises(LauncherError) as raised:
        kafka.start(progress=lambda _msg: None)
    message = str(raised.value)
    assert f"port(s) {listener} on 127.0.0.1 are taken" in message
    assert "SWITCHYARD_DEV_KAFKA_PORT" in message
    assert not kafka.pid_file.exists() and not kafka.log_file.exists()
