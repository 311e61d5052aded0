"""The trigger plugin interface: sources that turn outside signals into a tenant's trigger events.

A trigger plugin is an object with

- ``name`` — the plugin name instances refer to (``schedule``, ``example.heartbeat``);
- ``Config`` — a pydantic model of one instance's ``config`` block;
- ``run(config, emit, stop)`` — a blocking (threaded) loop that calls ``emit(Emission(...))`` for
  each outside signal until ``stop`` (a ``threading.Event``) is set, then returns.

``emit`` is bound to one trigger *instance* (its name and its tenant): it produces a
``TriggerEvent`` to that tenant's trigger topic and returns once the broker has it (raising
:class:`EmitError` otherwise). A plugin never chooses the tenant — the instance configuration
does. ``emit.recent_keys(prefix, since)`` returns the idempotency keys starting with ``prefix`` the
topic holds from ``since`` on, so a plugin can resume after a restart without emitting twice.
Give every emission a deterministic idempotency key: the router maps the same key to the same run.

Plugins outside this package register under the entry-point group ``switchyard.triggers``::

    [project.entry-points."switchyard.triggers"]
    "example.heartbeat" = "my_package.triggers:Heartbeat"

The entry point may name a class (instantiated without arguments) or an instance.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

ENTRY_POINT_GROUP = "switchyard.triggers"
TRIGGER_NAME = re.compile(r"[a-z][a-z0-9_]*([.-][a-z][a-z0-9_]*)*")


@dataclass(frozen=True)
class Emission:
    """One trigger event to emit."""

    event_type: str
    data: Any
    idempotency_key: str
    occurred_at: datetime | None = None
    correlation_id: str | None = None


class EmitError(RuntimeError):
    """The event could not be handed to the broker; emitting the same key again is safe."""


class Emitter(Protocol):
    """What a running trigger instance emits through."""

    instance: str
    tenant: str

    def __call__(self, emission: Emission) -> None: ...

    def recent_keys(self, prefix: str, since: datetime) -> set[str]: ...


@runtime_checkable
class TriggerPlugin(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def Config(self) -> type[BaseModel]: ...

    def run(self, config: Any, emit: Emitter, stop: threading.Event, /) -> None: ...


class TriggerLoadError(RuntimeError):
    """A trigger plugin could not be loaded, is malformed, or its name is taken."""


def _check(plugin: Any, source: str) -> None:
    name = getattr(plugin, "name", None)
    if not isinstance(name, str) or not TRIGGER_NAME.fullmatch(name):
        raise TriggerLoadError(f"{source}: trigger name {name!r} is invalid (e.g. 'schedule', 'crm.webhook')")
    model = getattr(plugin, "Config", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TriggerLoadError(f"{source}: trigger {name!r} has no pydantic Config model")
    if not callable(getattr(plugin, "run", None)):
        raise TriggerLoadError(f"{source}: trigger {name!r} has no run(config, emit, stop) method")


def _describe(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    where = f" (distribution {dist.name} {dist.version})" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r}{where}"


class TriggerRegistry:
    """Trigger plugins by name: the built-ins, ``switchyard.triggers`` entry points, explicit extras."""

    def __init__(self) -> None:
        self._plugins: dict[str, TriggerPlugin] = {}
        self._sources: dict[str, str] = {}

    @classmethod
    def load(
        cls, *, builtins: bool = True, entry_points: bool = True, extra: Iterable[TriggerPlugin] = ()
    ) -> TriggerRegistry:
        registry = cls()
        if builtins:
            from services.triggers.schedule import ScheduleTrigger

            registry.register(ScheduleTrigger(), source="built-in services.triggers.schedule")
        if entry_points:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    obj = ep.load()
                    plugin = obj() if isinstance(obj, type) else obj
                except Exception as exc:
                    raise TriggerLoadError(
                        f"{_describe(ep)} cannot be loaded: {type(exc).__name__}: {exc}"
                    ) from exc
                registry.register(plugin, source=_describe(ep), expected_name=ep.name)
        for plugin in extra:
            registry.register(plugin, source=f"explicit {type(plugin).__module__}.{type(plugin).__name__}")
        return registry

    def register(self, plugin: Any, *, source: str = "explicit", expected_name: str | None = None) -> None:
        _check(plugin, source)
        if expected_name is not None and expected_name != plugin.name:
            raise TriggerLoadError(
                f"{source}: entry point is named {expected_name!r} "
                f"but the plugin calls itself {plugin.name!r}"
            )
        if plugin.name in self._plugins:
            raise TriggerLoadError(
                f"trigger {plugin.name!r} is registered twice: "
                f"by {self._sources[plugin.name]} and by {source}"
            )
        self._plugins[plugin.name] = plugin
        self._sources[plugin.name] = source

    def get(self, name: str) -> TriggerPlugin | None:
        return self._plugins.get(name)

    def source(self, name: str) -> str | None:
        return self._sources.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._plugins)

    def __iter__(self) -> Iterator[TriggerPlugin]:
        return iter(list(self._plugins.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._plugins
