"""Settings: budgets that cannot fit a record are refused; list settings read plain commas or JSON;
invalid settings end every command with one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from services.cli import app, main
from services.config import (
    KAFKA_MESSAGE_MAX_BYTES,
    STATE_RECORD_OVERHEAD,
    Settings,
    SettingsInvalid,
    get_settings,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def test_defaults_leave_room_for_a_full_run_state_record() -> None:
    settings = Settings()
    assert (
        settings.max_trigger_bytes + settings.max_run_output_bytes + STATE_RECORD_OVERHEAD
        <= KAFKA_MESSAGE_MAX_BYTES
    )


def test_budgets_that_cannot_fit_in_a_record_are_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(max_trigger_bytes=512 * 1024, max_run_output_bytes=512 * 1024)
    message = str(raised.value)
    assert "SWITCHYARD_MAX_TRIGGER_BYTES (524288) + SWITCHYARD_MAX_RUN_OUTPUT_BYTES (524288)" in message
    assert "message.max.bytes" in message


def test_a_larger_message_max_bytes_allows_larger_budgets() -> None:
    settings = Settings(
        max_trigger_bytes=512 * 1024,
        max_run_output_bytes=2 * 1024 * 1024,
        kafka_options={"message.max.bytes": 4_000_000},
    )
    assert settings.max_run_output_bytes == 2 * 1024 * 1024


# --- list settings and invalid settings ------------------------------------------------------------


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ops@acme", ["ops@acme"]),
        ("ops@acme, lead@acme ,", ["ops@acme", "lead@acme"]),
        ('["ops@acme", "lead@acme"]', ["ops@acme", "lead@acme"]),
        ("", []),
    ],
)
def test_list_settings_take_plain_commas_or_json(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("SWITCHYARD_GLOBAL_OPERATORS", value)
    assert Settings().global_operators == expected


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "SWITCHYARD_GLOBAL_OPERATORS",
            '["ops@acme"',
            "invalid setting SWITCHYARD_GLOBAL_OPERATORS: not a JSON list",
        ),
        (
            "SWITCHYARD_MAX_BATCH",
            "0",
            "invalid setting SWITCHYARD_MAX_BATCH: Input should be greater than or equal to 1",
        ),
        ("SWITCHYARD_INTERNAL_PARTITIONS", "twelve", "invalid setting SWITCHYARD_INTERNAL_PARTITIONS: "),
        (
            "SWITCHYARD_KAFKA_OPTIONS",
            '{"sasl.password": "hunter2"',
            "invalid setting SWITCHYARD_KAFKA_OPTIONS: not valid JSON",
        ),
        ("SWITCHYARD_KAFKA_OPTIONS", '["a"]', "invalid setting SWITCHYARD_KAFKA_OPTIONS: "),
        (
            "SWITCHYARD_MAX_TRIGGER_BYTES",
            "900000",
            "invalid setting SWITCHYARD_MAX_TRIGGER_BYTES (900000) + ",
        ),
    ],
)
def test_invalid_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, fresh_settings: None, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsInvalid) as raised:
        get_settings()
    text = str(raised.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert "hunter2" not in text  # values are never echoed: some settings are secrets


@pytest.mark.parametrize(
    "argv",
    [
        ["switchyard", "runs", "list"],
        ["switchyard", "router", "--instance-id", "r1"],  # the engine's processes start the same way
        ["switchyard", "tenant", "list"],
    ],
)
def test_the_cli_prints_one_line_and_exits_2_on_invalid_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_settings: None, argv: list[str]
) -> None:
    monkeypatch.setenv("SWITCHYARD_GLOBAL_OPERATORS", "[ops@acme")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "error: invalid setting SWITCHYARD_GLOBAL_OPERATORS: not a JSON list (Expecting value); "
        "or write plain comma-separated values"
    ]
    assert "Traceback" not in captured.out + captured.err


def test_a_settings_error_raised_outside_get_settings_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def build() -> None:
        Settings(max_batch=0)

    monkeypatch.setattr(sys, "argv", ["switchyard", "boom"])
    monkeypatch.setattr("services.cli.app", build)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: invalid setting SWITCHYARD_MAX_BATCH: Input should be greater than or equal to 1"
    ]


def test_commands_that_need_no_settings_still_work_with_invalid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_MAX_BATCH", "many")
    result = CliRunner().invoke(app, ["workflow", "validate", str(EXAMPLES / "linear-chain.yaml")])
    assert result.exit_code == 0, result.output
    assert "OK linear-chain v1" in result.output
