"""`ensure_topics` returns only once the topics it created are in the broker's metadata."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.bus import topics
from services.bus.topics import TopicSpec, ensure_topics


class _Done:
    def result(self, timeout: float | None = None) -> None:
        return None


class LaggingAdmin:
    """CreateTopics succeeds at once; the metadata shows the topics only after ``lag`` lookups."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.created: list[Any] = []
        self.lookups = 0

    def list_topics(self, timeout: float) -> Any:
        self.lookups += 1
        shown = {}
        if self.created and self.lookups > self.lag + 1:  # the first lookup is ensure_topics' own
            for new in self.created:
                partitions = {i: SimpleNamespace(leader=1) for i in range(new.num_partitions)}
                shown[new.topic] = SimpleNamespace(error=None, partitions=partitions)
        return SimpleNamespace(topics=shown)

    def create_topics(self, new_topics: list[Any], operation_timeout: float) -> dict[str, _Done]:
        self.created = list(new_topics)
        return {t.topic: _Done() for t in new_topics}


SPECS = [TopicSpec("p.inbox", 4), TopicSpec("p.commands", 4)]


def test_returns_when_the_created_topics_are_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "time", SimpleNamespace(sleep=lambda _s: None, monotonic=lambda: 0.0))
    admin = LaggingAdmin(lag=3)
    assert sorted(ensure_topics(admin, SPECS)) == ["p.commands", "p.inbox"]  # type: ignore[arg-type]
    assert admin.lookups == 1 + 4  # its own, three that lag, one that shows them


def test_topics_that_never_show_are_an_error_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 10_000))
    fake_time = SimpleNamespace(sleep=lambda _s: None, monotonic=lambda: float(next(clock)))
    monkeypatch.setattr(topics, "time", fake_time)
    with pytest.raises(TimeoutError, match=r"not yet visible.*p\.commands, p\.inbox"):
        ensure_topics(LaggingAdmin(lag=10**9), SPECS)  # type: ignore[arg-type]
