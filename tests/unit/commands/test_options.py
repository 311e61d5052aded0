"""Bad option values end in one usage error and exit code 2, never a traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from services.cli import app
from services.commands.options import finite_seconds, since


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("999999999w", "reaches back before year 1"),
        ("9" * 400 + "d", "too long"),
        ("99999999999999999999d", "reaches back before year 1"),
        ("yesterday", "is neither an ISO 8601 date/time nor a duration"),
    ],
)
def test_bad_since_values_are_usage_errors(value: str, problem: str) -> None:
    with pytest.raises(typer.BadParameter, match=problem):
        since(value)
    result = CliRunner().invoke(app, ["runs", "list", "--since", value])
    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.output
    assert not isinstance(result.exception, OverflowError)
    assert "Traceback" not in result.output


def test_good_since_values_parse() -> None:
    assert since(None) is None
    parsed = since("2026-03-01T12:00")
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_seconds_must_be_finite(value: str) -> None:
    with pytest.raises(typer.BadParameter):
        finite_seconds(float(value))
    result = CliRunner().invoke(app, ["cancel", "some-run", "--reason", "x", "--wait", value])
    assert result.exit_code == 2
    assert "is not a finite number of seconds" in result.output
    assert finite_seconds(1.5) == 1.5
