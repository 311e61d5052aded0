"""On a real broker, `switchyard trigger` to a tenant that does not exist answers in well under
2 s (it used to wait out the 30 s message timeout), and librdkafka writes nothing raw to stderr."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.config import get_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, unique: str) -> Iterator[str]:
    prefix = f"ff{unique}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SWITCHYARD_TOPIC_PREFIX", prefix)
    get_settings.cache_clear()
    yield prefix
    get_settings.cache_clear()


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_trigger_for_an_unknown_tenant_fails_fast(cli_env: str, capfd: pytest.CaptureFixture[str]) -> None:
    runner = CliRunner()
    started = time.monotonic()
    result = runner.invoke(app, ["trigger", "--tenant", "nosuch", "--event", "x"], env={"COLUMNS": "300"})
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert f"topic {cli_env}.tenant.nosuch.triggers does not exist" in result.output
    assert elapsed < 2.0, f"took {elapsed:.1f}s"
    assert "%" not in capfd.readouterr().err


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_trigger_with_no_broker_fails_within_the_metadata_timeout(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    get_settings.cache_clear()
    try:
        started = time.monotonic()
        result = CliRunner().invoke(
            app, ["trigger", "--tenant", "acme", "--event", "x"], env={"COLUMNS": "300"}
        )
        elapsed = time.monotonic() - started
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "the broker did not answer within 5s" in result.output
    assert elapsed < 8.0
    # librdkafka's "%3|…|FAIL|… Connection refused" lines go to Python logging, not raw stderr
    assert "|FAIL|" not in capfd.readouterr().err
