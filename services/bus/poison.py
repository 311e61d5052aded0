"""The poison-batch guard: which failures a batch's records are to blame for, and the bisection.

A transaction that fails because of one of its input records fails again after the rewind, and
again, forever: every tenant on that partition stops. Processors are meant to be total (turn any
bad input into a dead letter or a failed run), and the :class:`~services.bus.txloop.Outbox`
refuses records over the size budget; this guard is the generic last line of defence for what
slips through. It knows nothing of workflows.

**Blame.** A failure is the records' doing when :meth:`process` raised anything but a
``KafkaException`` (a processor bug on that input, :class:`RecordTooLarge`), or when Kafka refused
a record the batch made (:data:`RECORD_ERROR_CODES`: too large, invalid, corrupt, a partition that
does not exist). Everything else is the infrastructure's doing — brokers down, a producer that
lost the cluster, fencing, transaction timeouts, coordinator moves — and never leads to a dead
letter: those keep the loop's abort / rewind / new-producer handling (:mod:`services.bus.txn_guard`).

**Bisection.** When the same batch (same starting positions) has failed ``N`` times by its records'
doing, the loop (:mod:`services.bus.txloop`) feeds it to the processor in windows, each in its own
transaction: a window that commits moves on, a window that fails is halved (the processor's memory
is rolled back with ``on_abort``), and a one-record window that fails isolates the poison record,
which is dead-lettered in a transaction of its own. Windows are prefixes of the batch in
consumption order, so what commits is always a prefix of every partition. A partition whose
position the processor set itself (a throttled tenant left in its topic, a step still running) is
not fed further: it is read again from its committed position when the bisection ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaError, Message

from services.contracts.text import bounded_text

POISON_KIND = "poison_record"
MAX_DESCRIPTION = 2000

#: librdkafka / Kafka error codes that are about a produced record, not about the cluster. A
#: record's timestamp (INVALID_TIMESTAMP) is the producer's clock, and a missing topic
#: (UNKNOWN_TOPIC_OR_PART, _UNKNOWN_TOPIC) or a timed-out delivery (_MSG_TIMED_OUT) is the
#: deployment's or the brokers' fault: those stay infrastructure.
RECORD_ERROR_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,  # over message.max.bytes (local) or the topic's max.message.bytes
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE: CRC or framing refused by the broker
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,  # e.g. a null key on a compacted topic
        KafkaError._BAD_MSG,
        KafkaError._UNKNOWN_PARTITION,  # a partition number the topic does not have
    }
)

Key = tuple[str, int]


def blames_records(error: KafkaError | None) -> bool:
    """Whether a Kafka error is about a record the batch produced (see the module docstring)."""
    return error is not None and not error.fatal() and error.code() in RECORD_ERROR_CODES


class RecordFault(Exception):
    """The processor raised while handling a batch's records (anything but a KafkaException)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def describe(exc: BaseException) -> str:
    """``Type: message``, bounded and UTF-8-safe (a message may quote the lone surrogate that
    caused it)."""
    return bounded_text(f"{type(exc).__name__}: {exc}", MAX_DESCRIPTION)


def key_of(msg: Message) -> Key:
    return (msg.topic() or "", msg.partition() or 0)


def offset_of(msg: Message) -> int:
    return msg.offset() or 0


def batch_key(records: Sequence[Message]) -> tuple[tuple[str, int, int], ...]:
    """A batch's identity: where it starts on each of its partitions."""
    starts: dict[Key, int] = {}
    for msg in records:
        starts.setdefault(key_of(msg), offset_of(msg))
    return tuple(sorted((topic, partition, offset) for (topic, partition), offset in starts.items()))


class FailureCounter:
    """Consecutive record-attributable failures of the same batch."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._key: tuple[tuple[str, int, int], ...] | None = None
        self.count = 0

    def failed(self, records: Sequence[Message]) -> bool:
        """Count a failure of ``records``; True once the batch has failed ``threshold`` times."""
        key = batch_key(records)
        if key != self._key:
            self._key, self.count = key, 0
        self.count += 1
        return self.count >= self.threshold

    def reset(self) -> None:
        self._key, self.count = None, 0


def fed_positions(records: Sequence[Message]) -> dict[Key, int]:
    """The next offset to read on each partition once ``records`` are handled."""
    out: dict[Key, int] = {}
    for msg in records:
        out[key_of(msg)] = offset_of(msg) + 1
    return out


class Bisection:
    """The windows of one failing batch (pure: the loop runs the transactions).

    The batch is known to fail as a whole; after a window ``[0, w)`` of a failing prefix
    ``[0, k)`` committed, the rest of that prefix, ``[w, k)``, is known to fail, so it is halved
    rather than tried whole. A record is dead-lettered only once it has failed *alone*: a batch of
    one record failed alone already; any other record is tried in a window of its own."""

    def __init__(self, records: Sequence[Message]) -> None:
        self.pending: list[Message] = list(records)
        self._failing = len(self.pending)  # pending[:_failing] is known to fail (0: unknown)
        self._failed_alone = len(self.pending) == 1
        self.window = max(1, len(self.pending) // 2)
        #: Committed position of every partition the bisection touched (the next offset to read).
        self.committed: dict[Key, int] = {}
        for msg in self.pending:
            self.committed.setdefault(key_of(msg), offset_of(msg))
        #: Partitions whose position the processor set itself: no longer fed.
        self.held: set[Key] = set()

    @property
    def done(self) -> bool:
        return not self.pending

    def known_poison(self) -> Message | None:
        """The next record, if it has already failed alone (a one-record batch): no need to try it."""
        return self.pending[0] if self._failed_alone and self.pending else None

    def next_window(self) -> list[Message]:
        if self._failing > 1 and self.window >= self._failing:
            self.window = self._failing // 2  # that much is known to fail: halve it instead
        return self.pending[: self.window]

    def succeeded(self, window: Sequence[Message], positions: Mapping[Key, int]) -> None:
        """``window`` committed with ``positions``."""
        del self.pending[: len(window)]
        fed = fed_positions(window)
        held_before = len(self.held)
        for key, offset in positions.items():
            self.committed[key] = offset
            if fed.get(key) != offset:
                self.held.add(key)
        if self.held:
            self.pending = [m for m in self.pending if key_of(m) not in self.held]
        # What is left of the failing prefix still fails, unless records left it (held partitions)
        # or nothing is left of it (the failure did not repeat: not deterministic).
        left = self._failing - len(window)
        self._failing = left if left > 0 and len(self.held) == held_before else 0

    def failed(self, window: Sequence[Message]) -> Message | None:
        """``window`` failed by its records' doing: the poison record once it is alone, else None
        (and the next window is half as long)."""
        if len(window) == 1:
            return window[0]
        self._failing = len(window)
        self.window = max(1, len(window) // 2)
        return None

    def poisoned(self, msg: Message) -> None:
        """``msg`` was dead-lettered and its offset committed: go on with the rest, all at once."""
        self.pending = [m for m in self.pending if m is not msg]
        self.committed[key_of(msg)] = offset_of(msg) + 1
        self._failing, self._failed_alone = 0, False
        self.window = max(1, len(self.pending))
