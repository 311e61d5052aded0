"""Closing the executor's processor cancels the attempts still running on its event loop, so
shutting down never leaves asyncio's "Task was destroyed but it is pending!" behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest

from services.bus.topics import Topics
from services.executor.guardrails import Guardrails
from services.executor.plugins import ActionRegistry
from services.executor.processor import ExecutorProcessor


def test_close_cancels_running_attempts_instead_of_destroying_them(caplog: pytest.LogCaptureFixture) -> None:
    processor = ExecutorProcessor(
        ActionRegistry.load(entry_points=False), Topics("t"), executor_id="ex-test", guardrails=Guardrails()
    )
    started = threading.Event()
    unwound = threading.Event()

    async def long_attempt() -> None:  # e.g. a 300 s sleep still running at shutdown
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            unwound.set()

    future = asyncio.run_coroutine_threadsafe(long_attempt(), processor.loop)
    assert started.wait(10)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        processor.close()
        gc.collect()
    assert processor.loop.is_closed()
    assert unwound.is_set(), "the attempt was not cancelled: its finally never ran"
    assert future.cancelled()
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
