"""Building a partition's runs in bulk (a restore) with the cyclic garbage collector paused.

A restore allocates millions of small container objects (a run's steps, trigger data, command
ids, timers) and frees almost none of them. Each allocation burst sets off collections that walk
every object allocated so far, young and old: measured on 100,000 in-flight runs, the collector
took more than half of the restore's time. Nothing a restore builds is cyclic garbage, so the
collector is paused for its duration and put back as it was (a collection the pause put off runs
at the next allocation threshold afterwards, once).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collection_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
