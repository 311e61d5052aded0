"""Running trigger instances: load their YAML configuration, one supervised thread per instance.

The configuration file is a YAML list of instances::

    - name: nightly-report     # unique; part of the schedule's idempotency keys — do not rename
      type: schedule           # a trigger plugin (`switchyard triggers list`)
      tenant: acme             # the tenant whose trigger topic receives the events
      config: {event_type: report.nightly, cron: "0 2 * * *", data: {}}

:func:`run_triggers` runs each instance's plugin in its own thread with a :class:`KafkaEmitter`;
a plugin that raises is logged and restarted after a backoff (up to 60 s) until ``stop`` is set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.bus.topics import Topics
from services.config import Settings
from services.contracts.records import JsonObject
from services.tenancy.config import TENANT_PATTERN
from services.triggers.emitter import KafkaEmitter
from services.triggers.plugins import Emitter, TriggerPlugin, TriggerRegistry

log = logging.getLogger("services.triggers")

MAX_RESTART_BACKOFF_S = 60.0


class TriggerInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")
    type: str = Field(min_length=1)
    tenant: str = Field(pattern=TENANT_PATTERN)
    config: JsonObject = Field(default_factory=dict)  # the plugin's own settings


class TriggerConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message says where and why."""


@dataclass(frozen=True)
class Prepared:
    instance: TriggerInstance
    plugin: TriggerPlugin
    config: BaseModel


def load_instances(path: Path, registry: TriggerRegistry) -> list[Prepared]:
    """Parse and validate a configuration file against the installed plugins."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TriggerConfigError(f"{path}: {exc}") from exc
    return prepare(raw, registry, source=str(path))


def prepare(raw: Any, registry: TriggerRegistry, source: str = "config") -> list[Prepared]:
    if not isinstance(raw, list):
        raise TriggerConfigError(f"{source}: expected a list of trigger instances")
    prepared: list[Prepared] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"{source}[{index}]"
        try:
            instance = TriggerInstance.model_validate(item)
        except ValidationError as exc:
            raise TriggerConfigError(f"{where}: {exc}") from exc
        where = f"{source}[{index}] ({instance.name})"
        if instance.name in seen:
            raise TriggerConfigError(f"{where}: duplicate instance name")
        seen.add(instance.name)
        plugin = registry.get(instance.type)
        if plugin is None:
            known = ", ".join(sorted(registry.names()))
            raise TriggerConfigError(f"{where}: unknown trigger type {instance.type!r} (installed: {known})")
        try:
            config = plugin.Config.model_validate(instance.config)
        except ValidationError as exc:
            raise TriggerConfigError(f"{where}: config: {exc}") from exc
        prepared.append(Prepared(instance, plugin, config))
    return prepared


def supervise(prepared: Prepared, emit: Emitter, stop: threading.Event) -> None:
    """Run one instance until ``stop``; restart it with backoff when it raises or returns early."""
    backoff = 1.0
    extra = {"tenant": prepared.instance.tenant, "trigger": prepared.instance.name}
    while not stop.is_set():
        try:
            prepared.plugin.run(prepared.config, emit, stop)
        except Exception:
            log.exception("trigger failed; restarting", extra={**extra, "backoff_s": backoff})
        else:
            if stop.is_set():
                break
            log.warning("trigger returned before stop; restarting", extra={**extra, "backoff_s": backoff})
        stop.wait(backoff)
        backoff = min(MAX_RESTART_BACKOFF_S, backoff * 2)


def run_triggers(
    settings: Settings,
    prepared: list[Prepared],
    stop: threading.Event,
    *,
    emitter_factory: Any = None,
) -> None:
    """Run every instance until ``stop`` is set. ``emitter_factory(settings, instance)`` overrides
    the :class:`KafkaEmitter` (tests, embedding)."""
    make = emitter_factory or (lambda s, i: KafkaEmitter(s, i.name, i.tenant))
    threads = []
    for item in prepared:
        emit = make(settings, item.instance)
        thread = threading.Thread(
            target=supervise, args=(item, emit, stop), name=f"trigger-{item.instance.name}", daemon=True
        )
        thread.start()
        threads.append(thread)
        log.info(
            "trigger started",
            extra={
                "tenant": item.instance.tenant,
                "trigger": item.instance.name,
                "type": item.instance.type,
                "topic": Topics(settings.topic_prefix).tenant_triggers(item.instance.tenant),
            },
        )
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
