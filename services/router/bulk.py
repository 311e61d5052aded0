"""Building a partition's runs in bulk (a restore) with the cyclic garbage collector paused.

A restore allocates millions of small container objects (a run's steps, trigger data, command
ids, timers) and frees almost none of them. Each allocation burst sets off collections that walk
the objects allocated so far, young and old: measured on 100,000 in-flight runs, the collector
took more than half of the restore's time. Nothing a restore builds is cyclic garbage, so the
collector is paused for its duration and put back as it was.

At the end, what the pause left in the young generations (the restored runs, mostly) is moved to
the oldest one as it is (``gc.freeze`` then ``gc.unfreeze``: two list splices) instead of being
walked by the next young collection, which would visit every restored object once more (~0.4 s
per 100,000 runs). They are scanned as any long-lived object is, at full collections; cyclic
garbage among them is found there. Skipped if the process froze objects itself (``unfreeze``
would thaw those too).
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
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()
