"""When a signed definition is authentic, and for which instants its signing key is trusted.

Two questions the registry keeps apart:

- **authentic** — the signature verifies against a key of the tenant's keyring that has a
  non-empty validity window, whatever the time now. Authenticity is what takes a version:
  versions are immutable, so the first authentic content under (tenant, name, version) holds it
  and different content under it later is a ``version_conflict``, also once the key has expired.
- **trusted at an instant** — authentic, and the instant is inside the key's window
  ``[not_before, min(not_after, revoked_at))``. The window is computed once, so that readers
  check trust on every use against a clock without re-verifying signatures.

Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.workflow.signing import KeyEntry, Keyring, Reason, SignatureError, verify_signed

if TYPE_CHECKING:
    from services.registry.definitions import DefinitionEntry

_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


def authenticity_error(entry: DefinitionEntry, keyring: Keyring) -> SignatureError | None:
    """``None`` when ``entry`` is authentic for its tenant (see the module docstring), else why not."""
    key = keyring.get(entry.signed.key_id)
    # Verify at an instant inside the key's window, so that only the window's emptiness (a key
    # revoked or expired before it was ever valid) counts, not where "now" is.
    instant = key.not_before if key is not None and key.not_before is not None else _EARLIEST
    try:
        verify_signed(entry.signed, entry.tenant, keyring, None, instant)
    except SignatureError as exc:
        return exc
    return None


@dataclass(frozen=True)
class TrustWindow:
    """The instants at which a key is trusted, and why trust ends (``end_reason``)."""

    start: dt.datetime | None
    end: dt.datetime | None
    end_reason: str = ""

    def covers(self, now: dt.datetime) -> bool:
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)


def trust_window(key: KeyEntry) -> TrustWindow:
    ends: list[tuple[dt.datetime, str]] = []
    if key.revoked_at is not None:
        message = f"key {key.key_id!r} was revoked at {key.revoked_at.isoformat()}"
        ends.append((key.revoked_at, str(SignatureError(Reason.KEY_REVOKED, message))))
    if key.not_after is not None:
        message = f"key {key.key_id!r} expired at {key.not_after.isoformat()}"
        ends.append((key.not_after, str(SignatureError(Reason.KEY_EXPIRED, message))))
    if not ends:
        return TrustWindow(key.not_before, None)
    end, reason = min(ends, key=lambda item: item[0])
    return TrustWindow(key.not_before, end, reason)


def untrusted_at(windows: Sequence[TrustWindow], now: dt.datetime) -> str | None:
    """``None`` if one of ``windows`` covers ``now``, else why not (the trust that ended last)."""
    if any(w.covers(now) for w in windows):
        return None
    ended = [w for w in windows if w.end is not None and w.end <= now]
    if ended:
        return max(ended, key=lambda w: w.end or _EARLIEST).end_reason
    starts = sorted(w.start for w in windows if w.start is not None)
    if starts:
        message = f"signing key is valid from {starts[0].isoformat()}"
        return str(SignatureError(Reason.KEY_NOT_YET_VALID, message))
    return "no trusted signature"


def content_holder(candidates: Iterable[DefinitionEntry], keyring: Keyring | None) -> DefinitionEntry | None:
    """Which of one version's records (in arrival order) holds the version: the first authentic one.

    ``None`` when none is authentic (or the tenant has no keyring: ``keyring`` None).
    """
    if keyring is None:
        return None
    return next((c for c in candidates if authenticity_error(c, keyring) is None), None)


def published_hashes(
    histories: Mapping[str, Sequence[DefinitionEntry]], tenant: str, keyring: Keyring
) -> dict[tuple[str, int], str]:
    """``(name, version) -> content hash`` of what holds each of ``tenant``'s published versions.

    The holder is the first authentic record; a version with no authentic record is held by its
    latest record, so that publishing never puts new content under a version that already has
    records (stricter than the readers, which would take a later authentic one).
    """
    held: dict[tuple[str, int], str] = {}
    for candidates in histories.values():
        if not candidates or candidates[-1].tenant != tenant:
            continue
        holder = content_holder(candidates, keyring) or candidates[-1]
        held[(holder.signed.name, holder.signed.version)] = holder.signed.content_hash
    return held
