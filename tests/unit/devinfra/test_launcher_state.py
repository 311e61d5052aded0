"""The launcher's record of what it started: `down` stops only what `up` started."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import Settings
from services.devinfra import launcher


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return tmp_path


def test_down_stops_nothing_it_did_not_start(state_home: Path) -> None:
    launcher.DevState(
        kafka=launcher.Endpoint("broker.example:9092", "environment"),
        postgres=launcher.Endpoint("postgresql://db.example/x", "environment"),
    ).save()
    assert launcher.down(Settings(dev_kafka_port=1, dev_kafka_controller_port=2)) == []


def test_state_round_trips_and_export_lines(state_home: Path) -> None:
    state = launcher.DevState(
        kafka=launcher.Endpoint("127.0.0.1:29092", "local", started_by_up=True, log_file="/x/broker.log"),
        postgres=launcher.Endpoint("postgresql://postgres:@/postgres?host=/x", "local", started_by_up=False),
    )
    state.save()
    loaded = launcher.DevState.load()
    assert loaded == state
    assert launcher.export_lines(loaded) == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092",
        "export DATABASE_URL='postgresql://postgres:@/postgres?host=/x'",
    ]
    assert str(launcher.DevState.path()).startswith(str(state_home))


def test_environment_wins_over_the_launcher(state_home: Path) -> None:
    settings = Settings(database_url="postgresql://db.example/app")
    endpoint = launcher.ensure_postgres(settings, print, use_docker=False)
    assert endpoint == launcher.Endpoint("postgresql://db.example/app", "environment")


def test_wipe_deletes_the_local_data_and_refuses_while_a_server_runs(state_home: Path) -> None:
    import os

    settings = Settings(dev_kafka_port=1, dev_kafka_controller_port=2)
    kafka_data = state_home / "switchyard" / "kafka" / "data" / "wf.inbox-0"
    postgres_data = state_home / "switchyard" / "postgres" / "base"
    for path in (kafka_data, postgres_data):
        path.mkdir(parents=True)
    pid_file = state_home / "switchyard" / "kafka" / "broker.pid"
    pid_file.write_text(str(os.getpid()))  # a live pid: "the broker still runs"
    with pytest.raises(launcher.LauncherError, match="Kafka still running"):
        launcher.wipe(settings)
    assert kafka_data.exists() and postgres_data.exists()
    pid_file.unlink()
    wiped = launcher.wipe(settings)
    assert [w.split(" ")[0] for w in wiped] == ["kafka", "postgres"]
    assert not kafka_data.parent.exists() and not postgres_data.parent.exists()
    assert launcher.wipe(settings) == []
