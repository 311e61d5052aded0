"""How `switchyard dlq show` presents a dead letter (services.dlq.views), and the command line's
usage errors, which are decided before any broker or database is reached."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.contracts import serde
from services.dlq.views import detail, value_view
from tests.unit.dlq.test_eligibility import TOPICS, letter


def test_an_avro_trigger_is_decoded_and_its_credentials_redacted() -> None:
    record = {
        "event_type": "go",
        "data_json": json.dumps({"password": "hunter2", "n": 1}),
        "idempotency_key": "k-1",
        "correlation_id": None,
        "occurred_at": 0,
    }
    view = value_view(serde.encode("TriggerEvent", record))
    assert view is not None and view["format"] == "avro:TriggerEvent"
    assert view["value"]["data"] == {"password": "[redacted]", "n": 1}
    assert "data_json" not in view["value"]


def test_json_is_parsed_and_anything_else_shown_as_redacted_text() -> None:
    assert value_view(b'{"token": "abc", "x": 1}') == {
        "format": "json",
        "value": {"token": "[redacted]", "x": 1},
        "truncated": False,
    }
    text = value_view(b"not json Bearer abc.def \xff")
    assert text is not None and text["format"] == "text"
    assert "abc.def" not in text["value"] and "[redacted]" in text["value"]
    assert value_view(None) is None


def test_detail_says_whether_and_why_not() -> None:
    ok = detail(letter(), [], TOPICS, 256 * 1024)
    assert ok["redrivable"] is True and ok["refusal"] is None and ok["redrives"] == []
    assert ok["source"] == {"topic": "wf.tenant.acme.triggers", "partition": 0, "offset": 7}
    bad = detail(letter(error_kind="invalid_json"), [], TOPICS, 256 * 1024)
    assert (bad["redrivable"], bad["redrivable_with_again"]) == (False, False)
    assert bad["refusal"]["code"] == "never_succeeds"
    cut = detail(letter(original_value_size=100_000), [], TOPICS, 256 * 1024)
    assert cut["original_value_stored_cut"] is True and cut["redrivable"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["redrive"], "give dead-letter IDs"),
        (["redrive", "some-id", "--tenant", "acme"], "not both"),
        (["list", "--redriven", "--not-redriven"], "exclude each other"),
        (["list", "--since", "last tuesday"], "--since"),
        (["redrive", "--tenant", "acme", "--until", "2h", "--since", "1h"], "is not after"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["dlq", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
