"""A fake clock and an in-memory emitter for trigger plugin tests (no I/O)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from services.triggers.plugins import Emission, EmitError


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += timedelta(seconds=seconds)


class MemoryEmitter:
    """Remembers emissions; ``fail_next`` makes the next emits raise :class:`EmitError`."""

    def __init__(self, instance: str = "tick", tenant: str = "acme") -> None:
        self.instance, self.tenant = instance, tenant
        self.emitted: list[Emission] = []
        self.fail_next = 0
        self.changed = threading.Condition()
        self.scanned = threading.Event()

    def __call__(self, emission: Emission) -> None:
        with self.changed:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise EmitError("broker unavailable")
            self.emitted.append(emission)
            self.changed.notify_all()

    def recent_keys(self, prefix: str, since: datetime) -> set[str]:
        self.scanned.set()
        return {
            e.idempotency_key
            for e in self.emitted
            if e.idempotency_key.startswith(prefix) and (e.occurred_at or since) >= since
        }

    def keys(self) -> list[str]:
        return [e.idempotency_key for e in self.emitted]

    def wait_for(self, count: int, timeout_s: float = 10) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.emitted) >= count, timeout_s)
        assert ok, f"expected {count} emissions within {timeout_s}s, got {self.keys()}"


def at(minute: int, second: int = 0) -> datetime:
    return datetime(2030, 1, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=minute, seconds=second)


def key(minute: int, instance: str = "tick") -> str:
    return f"schedule:{instance}:{at(minute).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def noop(*args: Any) -> None:
    return None
