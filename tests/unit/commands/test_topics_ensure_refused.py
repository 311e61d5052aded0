"""`switchyard topics ensure` by a principal the broker does not let create topics: one actionable
line and exit 1, not a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from services.cli import app
from services.commands import processes


def test_an_authorization_failure_is_reported_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setattr(processes, "admin_client", lambda settings: object())
    monkeypatch.setattr(processes, "check_replication", lambda admin, settings: [])

    def refuse(admin: Any, specs: Any) -> list[str]:
        raise KafkaException(
            KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Authorization failed: CREATE on wf.inbox")
        )

    monkeypatch.setattr(processes, "ensure_topics", refuse)
    result = CliRunner().invoke(app, ["topics", "ensure"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "the broker refused" in result.output
    assert "Authorization failed" in result.output
    assert "--role admin" in result.output
