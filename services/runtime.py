"""Process runtime for the long-running commands: logging, signals, and running services in threads.

The first SIGTERM/SIGINT asks every loop to finish its current transaction and close cleanly;
a second one exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from services.config import Settings
from services.observability import logs

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        log.info("stopping (signal %s); send it again to exit at once", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def setup_logging(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format)


ServiceFn = Callable[[Settings, threading.Event], None]


def run_services(settings: Settings, services: dict[str, ServiceFn], stop: threading.Event) -> None:
    """Run each service in a thread; if one fails, stop them all and re-raise its error."""
    errors: list[BaseException] = []

    def guarded(name: str, fn: ServiceFn) -> None:
        try:
            fn(settings, stop)
        except BaseException as exc:
            errors.append(exc)
            log.exception("service %s failed", name)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(n, f), name=n) for n, f in services.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    if errors:
        raise errors[0]
