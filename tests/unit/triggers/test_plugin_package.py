"""The example plugin package: its entry points are discovered by both registries.

Rather than ``pip install -e`` (slow, and it changes the environment for every later test), the
test lays out what an install leaves on ``sys.path``: the package source directory and a
``*.dist-info`` directory whose ``entry_points.txt`` is generated from the example's own
``pyproject.toml``. ``importlib.metadata`` discovers it exactly as it would an installed
distribution, so a wrong group, name or object path in the pyproject fails this test.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor import ActionRegistry, execute_command
from services.triggers import TriggerRegistry
from services.triggers.runner import prepare
from tests.unit.executor.helpers import command, output_of
from tests.unit.triggers.helpers import MemoryEmitter

PACKAGE = Path(__file__).resolve().parents[3] / "examples" / "plugin-package"


def write_dist_info(target: Path) -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist = target / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{ep} = {value}" for ep, value in entries.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    write_dist_info(tmp_path / "site")
    monkeypatch.syspath_prepend(str(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield
    for module in [m for m in sys.modules if m.startswith("switchyard_example_plugins")]:
        del sys.modules[module]


def test_action_registry_discovers_the_example_action(installed: None) -> None:
    registry = ActionRegistry.load()
    assert "example.greet" in registry
    assert "switchyard-example-plugins 0.1.0" in (registry.source("example.greet") or "")
    result = asyncio.run(execute_command(registry, command("example.greet", {"name": "Ada"})))
    assert result["status"] == "succeeded"
    assert output_of(result) == {"greeting": "Hello, Ada!", "attempt": 1}
    failed = asyncio.run(execute_command(registry, command("example.greet", {"name": "nobody"})))
    assert (failed["error_kind"], failed["retryable"]) == ("no_one_to_greet", False)


def test_trigger_registry_discovers_the_example_trigger(installed: None) -> None:
    registry = TriggerRegistry.load()
    assert registry.names() >= {"schedule", "example.heartbeat"}
    [item] = prepare(
        [{"name": "hb", "type": "example.heartbeat", "tenant": "acme", "config": {"interval_s": 5}}],
        registry,
    )
    plugin = type(item.plugin)(clock=lambda: 1000.0)  # type: ignore[call-arg]
    emitter, stop = MemoryEmitter(instance="hb"), threading.Event()
    thread = threading.Thread(target=plugin.run, args=(item.config, emitter, stop), daemon=True)
    thread.start()
    emitter.wait_for(1)
    stop.set()
    thread.join(5)
    assert emitter.keys() == ["heartbeat:hb:200"]
    assert emitter.emitted[0].data == {"beat": 200}


def test_without_the_package_nothing_extra_is_registered() -> None:
    assert "example.greet" not in ActionRegistry.load()
    assert "example.heartbeat" not in TriggerRegistry.load()
