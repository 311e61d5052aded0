"""TriggerRegistry and instance configuration: validation errors name the instance and the reason."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from services.triggers import TriggerLoadError, TriggerRegistry
from services.triggers.runner import TriggerConfigError, load_instances, prepare, supervise
from tests.unit.triggers.helpers import MemoryEmitter

GOOD = {
    "name": "nightly",
    "type": "schedule",
    "tenant": "acme",
    "config": {"event_type": "report.nightly", "cron": "0 2 * * *"},
}


def test_builtin_schedule_is_registered() -> None:
    registry = TriggerRegistry.load(entry_points=False)
    assert registry.names() == {"schedule"}
    assert registry.source("schedule") == "built-in services.triggers.schedule"


def test_config_file_is_loaded_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text(
        "- name: nightly\n  type: schedule\n  tenant: acme\n"
        "  config: {event_type: report.nightly, cron: '0 2 * * *', data: {a: 1}}\n"
    )
    [item] = load_instances(path, TriggerRegistry.load(entry_points=False))
    assert item.instance.name == "nightly" and item.config.data == {"a": 1}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"not": "a list"}, "expected a list"),
        ([{**GOOD, "type": "nope"}], "unknown trigger type 'nope'"),
        ([GOOD, GOOD], "duplicate instance name"),
        ([{**GOOD, "tenant": "Not A Tenant"}], "should match pattern"),
        ([{**GOOD, "config": {"event_type": "x", "cron": "bad"}}], "(nightly): config"),
        ([{**GOOD, "extra": 1}], "extra"),
    ],
)
def test_bad_configs_are_rejected_with_the_reason(raw: Any, message: str) -> None:
    with pytest.raises(TriggerConfigError) as info:
        prepare(raw, TriggerRegistry.load(entry_points=False))
    assert message in str(info.value)


class NoConfig(BaseModel):
    pass


class Flaky:
    name = "flaky"
    Config = NoConfig

    def __init__(self) -> None:
        self.runs = 0

    def run(self, config: Any, emit: Any, stop: threading.Event, /) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("first run fails")
        stop.set()


def test_duplicate_and_malformed_plugins_are_rejected() -> None:
    registry = TriggerRegistry.load(entry_points=False)
    with pytest.raises(TriggerLoadError, match="registered twice"):
        registry.register(registry.get("schedule"))

    class Nameless:
        name = "Bad Name"
        Config = BaseModel

        def run(self, config: Any, emit: Any, stop: Any) -> None: ...

    with pytest.raises(TriggerLoadError, match="invalid"):
        registry.register(Nameless())


def test_a_failing_plugin_is_restarted() -> None:
    flaky = Flaky()
    registry = TriggerRegistry.load(entry_points=False, extra=[flaky])
    [item] = prepare([{"name": "f", "type": "flaky", "tenant": "acme"}], registry)
    stop = threading.Event()
    thread = threading.Thread(target=supervise, args=(item, MemoryEmitter(), stop), daemon=True)
    thread.start()
    thread.join(10)  # first run raises, restart after 1 s, second run sets stop
    assert not thread.is_alive() and flaky.runs == 2
