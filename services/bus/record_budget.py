"""The size budget of every record the engine writes, counted as encoded bytes.

A record larger than the producer's ``message.max.bytes`` fails at ``produce`` (or later, at
commit), and since the same input produces the same record again after the rewind, the
transaction would fail forever and stall every tenant on that partition. So the :class:`Outbox`
checks each record *before* producing it and raises :class:`RecordTooLarge`; processors catch it
and turn it into a failed run or a bounded dead letter.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Room left under message.max.bytes for librdkafka's per-message framing (record batch header,
#: varints, timestamp deltas). Generous on purpose: being refused by the broker is what we avoid.
FRAMING_MARGIN = 1024

Headers = Sequence[tuple[str, str | bytes | None]]


class RecordTooLarge(ValueError):
    """A record would exceed the producible size. Raised before anything was produced."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(f"a record for {topic} would be {size} bytes; the most the engine writes is {limit}")
        self.topic = topic
        self.size = size
        self.limit = limit


def _length(data: str | bytes | None) -> int:
    if data is None:
        return 0
    return len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))


def record_size(key: str | bytes | None, value: bytes | None, headers: Headers | None = None) -> int:
    """Encoded bytes of key, value and every header (name and value)."""
    size = _length(key) + _length(value)
    for name, header in headers or ():
        size += _length(name) + _length(header)
    return size


def producible_limit(message_max_bytes: int) -> int:
    """The largest key + value + headers the engine writes under ``message_max_bytes``."""
    return message_max_bytes - FRAMING_MARGIN
