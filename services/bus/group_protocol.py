"""Which consumer group protocol the engine's consumers speak: KIP-848 ``consumer`` or ``classic``.

Recovery after a killed process is bounded by how long the group coordinator waits for the dead
member. With the classic protocol that is the client's ``session.timeout.ms`` (10 s here); with
the KIP-848 protocol it is the *broker's* ``group.consumer.session.timeout.ms`` (Kafka's default:
45 s, and a 5 s heartbeat that also delays every assignment). So the KIP-848 protocol only helps
on a broker configured for it (``switchyard dev up`` writes 2 s / 0.5 s, see
:data:`services.devinfra.kafka_local.CONSUMER_GROUP_PROPERTIES`).

``SWITCHYARD_GROUP_PROTOCOL=auto`` (the default) asks the broker once per process: ``consumer``
when it offers the protocol with a session timeout no longer than the classic one, else
``classic``. A broker that cannot be asked (unreachable, or no DESCRIBE_CONFIGS right) gets
``classic``, which works everywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from services.config import Settings

log = logging.getLogger(__name__)

Protocol = Literal["classic", "consumer"]

#: The classic protocol's client-side session timeout (services.bus.clients.consumer_config).
CLASSIC_SESSION_TIMEOUT_MS = 10_000
CLASSIC_HEARTBEAT_INTERVAL_MS = 1_000
LOOKUP_BUDGET_S = 5.0

SESSION_TIMEOUT = "group.consumer.session.timeout.ms"
HEARTBEAT_INTERVAL = "group.consumer.heartbeat.interval.ms"
PROTOCOLS = "group.coordinator.rebalance.protocols"

_chosen: dict[str, Protocol] = {}
_lock = threading.Lock()


def choose(requested: str, broker: dict[str, str] | None) -> Protocol:
    """The protocol for ``requested`` (``classic``, ``consumer`` or ``auto``), given the broker's
    group settings (None: unknown). Pure."""
    if requested == "classic":
        return "classic"
    if requested == "consumer":
        return "consumer"
    if broker is None:
        return "classic"
    offered = {p.strip() for p in broker.get(PROTOCOLS, "classic").split(",")}
    try:
        session_ms = int(broker[SESSION_TIMEOUT])
        heartbeat_ms = int(broker[HEARTBEAT_INTERVAL])
    except (KeyError, ValueError):
        return "classic"
    faster = session_ms <= CLASSIC_SESSION_TIMEOUT_MS and heartbeat_ms <= CLASSIC_HEARTBEAT_INTERVAL_MS
    return "consumer" if "consumer" in offered and faster else "classic"


def group_protocol(settings: Settings) -> Protocol:
    """The protocol this process uses with ``settings``' cluster (asked once, then remembered)."""
    if settings.group_protocol != "auto":
        return choose(settings.group_protocol, None)
    key = settings.kafka_bootstrap_servers or ""
    with _lock:
        if key not in _chosen:
            broker = _broker_group_settings(settings)
            _chosen[key] = choose("auto", broker)
            log.info(
                "consumer group protocol chosen",
                extra={"group_protocol": _chosen[key], "broker_group_settings": broker},
            )
        return _chosen[key]


def _broker_group_settings(settings: Settings) -> dict[str, str] | None:
    """One broker's group coordinator settings, or None if it cannot be asked within the budget
    (given up as soon as librdkafka reports every broker down)."""
    down = threading.Event()

    def on_error(error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE):
            down.set()

    conf = settings.kafka_config()
    conf["error_cb"] = on_error
    admin = AdminClient(conf)
    deadline = time.monotonic() + LOOKUP_BUDGET_S
    try:
        cluster = admin.describe_cluster(request_timeout=LOOKUP_BUDGET_S)
        while not cluster.done() and not down.is_set() and time.monotonic() < deadline:
            admin.poll(0.05)
        if not cluster.done():
            cluster.cancel()
            return None
        nodes = cluster.result().nodes
        if not nodes:
            return None
        resource = ConfigResource(ConfigResource.Type.BROKER, str(nodes[0].id))
        future = admin.describe_configs([resource], request_timeout=LOOKUP_BUDGET_S)[resource]
        while not future.done() and not down.is_set() and time.monotonic() < deadline:
            admin.poll(0.05)
        if not future.done():
            future.cancel()
            return None
        entries = future.result()
    except (KafkaException, ValueError, TypeError) as exc:
        log.warning("cannot read the broker's group settings; using classic", extra={"error": str(exc)})
        return None
    return {
        name: str(entries[name].value)
        for name in (SESSION_TIMEOUT, HEARTBEAT_INTERVAL, PROTOCOLS)
        if name in entries and entries[name].value is not None
    }


def forget() -> None:
    """Ask again next time (a broker reconfigured and restarted under a running process)."""
    with _lock:
        _chosen.clear()
