"""The selection options of ``switchyard dlq list`` and ``dlq redrive --tenant`` (pure: no I/O).

:func:`parse_filter` turns option values into a :class:`DeadLetterFilter` or raises
``ValueError`` with a message naming the option, so a bad value is one usage error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.projector.queries import parse_since

#: Longest value accepted for a text filter (longer cannot match a stored column).
MAX_FILTER_TEXT = 512
#: Default and largest ``--limit`` of ``dlq list``.
DEFAULT_LIMIT = 50
MAX_LIST_LIMIT = 10_000


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: every field given must match (``redriven`` None: either)."""

    tenant: str | None = None
    error_kind: str | None = None
    source_topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    redriven: bool | None = None

    @property
    def empty(self) -> bool:
        return self == DeadLetterFilter()


def _text(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"{option}: empty value")
    if len(value) > MAX_FILTER_TEXT:
        raise ValueError(f"{option}: longer than {MAX_FILTER_TEXT} characters")
    return value


def _time(value: str | None, option: str, now: datetime | None) -> datetime | None:
    if value is None:
        return None
    if len(value) > 64:
        raise ValueError(f"{option}: {value[:40]!r}… is too long for a date/time or a duration")
    try:
        return parse_since(value, now)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
    except OverflowError:
        raise ValueError(f"{option}: {value!r} reaches back before year 1") from None


def parse_filter(
    *,
    tenant: str | None = None,
    error_kind: str | None = None,
    source_topic: str | None = None,
    since: str | None = None,
    until: str | None = None,
    redriven: bool = False,
    not_redriven: bool = False,
    now: datetime | None = None,
) -> DeadLetterFilter:
    """The filter of the options; ``since``/``until`` take ISO 8601 (naive: UTC) or a duration ago."""
    if redriven and not_redriven:
        raise ValueError("--redriven and --not-redriven exclude each other")
    since_at = _time(since, "--since", now)
    until_at = _time(until, "--until", now)
    if since_at is not None and until_at is not None and until_at <= since_at:
        raise ValueError(f"--until ({until_at.isoformat()}) is not after --since ({since_at.isoformat()})")
    return DeadLetterFilter(
        tenant=_text(tenant, "--tenant"),
        error_kind=_text(error_kind, "--error-kind"),
        source_topic=_text(source_topic, "--source-topic"),
        since=since_at,
        until=until_at,
        redriven=True if redriven else False if not_redriven else None,
    )
