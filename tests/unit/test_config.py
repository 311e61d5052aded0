"""Settings that would make the router's state records unproducible are refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.config import KAFKA_MESSAGE_MAX_BYTES, STATE_RECORD_OVERHEAD, Settings


def test_defaults_leave_room_for_a_full_run_state_record() -> None:
    settings = Settings()
    assert (
        settings.max_trigger_bytes + settings.max_run_output_bytes + STATE_RECORD_OVERHEAD
        <= KAFKA_MESSAGE_MAX_BYTES
    )


def test_budgets_that_cannot_fit_in_a_record_are_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(max_trigger_bytes=512 * 1024, max_run_output_bytes=512 * 1024)
    message = str(raised.value)
    assert "SWITCHYARD_MAX_TRIGGER_BYTES (524288) + SWITCHYARD_MAX_RUN_OUTPUT_BYTES (524288)" in message
    assert "message.max.bytes" in message


def test_a_larger_message_max_bytes_allows_larger_budgets() -> None:
    settings = Settings(
        max_trigger_bytes=512 * 1024,
        max_run_output_bytes=2 * 1024 * 1024,
        kafka_options={"message.max.bytes": 4_000_000},
    )
    assert settings.max_run_output_bytes == 2 * 1024 * 1024
