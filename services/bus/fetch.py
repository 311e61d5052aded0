"""Reading what a consumer has fetched without waiting out the timeout once something arrived.

librdkafka's batch ``consume(num_messages, timeout)`` returns when it has ``num_messages``
records *or* when ``timeout`` has passed: with fewer records than asked for, it waits the whole
timeout even though a record came in at once. A loop that reacts to single records (a
cancellation, the end of a read-back, a test waiting for an event) then pays the full timeout
on every round. :func:`consume_ready` waits up to ``timeout_s`` for the *first* record only and
then takes what is already fetched: the transactional loop reads its batches this way.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Message


def consume_ready(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to ``max_messages`` records (errors included): the first within ``timeout_s``, the
    rest only if already fetched. Empty if nothing arrived within ``timeout_s``."""
    first = consumer.consume(num_messages=1, timeout=timeout_s)
    if not first or max_messages <= 1:
        return first
    return [*first, *consumer.consume(num_messages=max_messages - 1, timeout=0)]
