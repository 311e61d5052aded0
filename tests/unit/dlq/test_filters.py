"""The selection options of `switchyard dlq` (services.dlq.filters)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.dlq.filters import DeadLetterFilter, parse_filter

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_no_option_is_the_empty_filter() -> None:
    assert parse_filter() == DeadLetterFilter()
    assert parse_filter().empty
    assert not parse_filter(tenant="acme").empty


def test_times_are_iso_or_durations_ago_and_naive_means_utc() -> None:
    f = parse_filter(since="2d", until="2026-11-30T06:00", now=NOW)
    assert f.since == NOW - timedelta(days=2)
    assert f.until == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def test_redriven_is_three_valued() -> None:
    assert parse_filter().redriven is None
    assert parse_filter(redriven=True).redriven is True
    assert parse_filter(not_redriven=True).redriven is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"redriven": True, "not_redriven": True}, "exclude each other"),
        ({"since": "yesterday-ish"}, "--since"),
        ({"until": "x" * 100}, "too long"),
        ({"since": "1h", "until": "2h"}, "is not after --since"),
        ({"tenant": " "}, "--tenant: empty"),
        ({"error_kind": "k" * 600}, "--error-kind: longer than"),
        ({"since": "999999999w"}, "before year 1"),
    ],
)
def test_bad_values_say_which_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_filter(now=NOW, **options)  # type: ignore[arg-type]
