"""`switchyard triggers list | run --check` (services.commands.triggers)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.commands.triggers import app


def test_list_shows_the_builtin_schedule() -> None:
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "schedule" in result.output and "cron" in result.output


def test_run_check_validates_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "- {name: nightly, type: schedule, tenant: acme, config: {event_type: r, cron: '0 2 * * *'}}\n"
    )
    result = CliRunner().invoke(app, ["run", "--config", str(good), "--check"])
    assert result.exit_code == 0, result.output
    assert "1 trigger instance(s) valid" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: nightly, type: nope, tenant: acme}\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad), "--check"])
    assert result.exit_code == 2
    assert "unknown trigger type" in result.output
