"""``example.heartbeat``: a minimal trigger — emits an event every ``interval_s`` seconds.

Each beat's idempotency key is ``heartbeat:<instance>:<n>`` where ``n`` counts intervals since the
Unix epoch, so a restarted heartbeat re-emitting the current beat maps to the same run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from services.triggers.plugins import Emission, EmitError, Emitter


class HeartbeatConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: str = "example.heartbeat"
    interval_s: float = Field(default=60.0, gt=0)


class Heartbeat:
    name = "example.heartbeat"
    Config = HeartbeatConfig

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def run(self, config: HeartbeatConfig, emit: Emitter, stop: threading.Event, /) -> None:
        last = -1
        while not stop.is_set():
            now = self.clock()
            beat = int(now // config.interval_s)
            if beat != last:
                try:
                    emit(
                        Emission(
                            config.event_type,
                            {"beat": beat},
                            f"heartbeat:{emit.instance}:{beat}",
                            occurred_at=datetime.fromtimestamp(beat * config.interval_s, UTC),
                        )
                    )
                    last = beat
                except EmitError:
                    pass  # retried on the next wake-up
            stop.wait(min(1.0, config.interval_s))
