"""The lost-connection rule: one broker (any loss replaces the producer) against a cluster (only a
coordinator's or all brokers' loss does), in isolation and driving the transactional loop."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from services.bus.connection_loss import COORDINATOR_HANDLES, makes_producer_stale
from tests.unit.bus.test_txloop_poison import dead_letters, expected, fill, outputs
from tests.unit.bus.txloop_fakes import EchoProcessor, FakeBroker, harness, kafka_exception

NODE_LOST = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:29294/2: Connect to ipv4#127.0.0.1:29294 failed")
TXN_COORDINATOR_LOST = KafkaError(
    KafkaError._TRANSPORT, "TxnCoordinator/2: Disconnected (after 3021ms in state UP)"
)
GROUP_COORDINATOR_LOST = KafkaError(
    KafkaError._TRANSPORT, "GroupCoordinator/3: Connect to ipv4#127.0.0.1:29296 failed"
)
ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down")

# librdkafka's error strings are C strings: no NUL. Half the texts name a coordinator handle.
_chars = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
_text = st.text(alphabet=_chars, max_size=60)
error_texts = st.one_of(
    _text,
    st.builds(lambda a, handle, b: a + handle + b, _text, st.sampled_from(COORDINATOR_HANDLES), _text),
)


@pytest.mark.parametrize("brokers", [0, 1])
@pytest.mark.parametrize("error", [NODE_LOST, TXN_COORDINATOR_LOST, GROUP_COORDINATOR_LOST, ALL_DOWN])
def test_on_one_broker_or_an_unknown_cluster_every_lost_connection_counts(
    error: KafkaError, brokers: int
) -> None:
    assert makes_producer_stale(error, brokers)


@pytest.mark.parametrize(
    ("error", "stale"),
    [(NODE_LOST, False), (TXN_COORDINATOR_LOST, True), (GROUP_COORDINATOR_LOST, True), (ALL_DOWN, True)],
)
def test_on_a_cluster_only_a_coordinator_or_all_brokers_count(error: KafkaError, stale: bool) -> None:
    assert makes_producer_stale(error, 3) is stale


@given(
    code=st.sampled_from(
        [
            KafkaError._MAX_POLL_EXCEEDED,
            KafkaError._TIMED_OUT,
            KafkaError._RESOLVE,
            KafkaError.REQUEST_TIMED_OUT,
        ]
    ),
    text=error_texts,
    brokers=st.integers(0, 9),
)
def test_errors_other_than_a_lost_connection_never_count(code: int, text: str, brokers: int) -> None:
    assert not makes_producer_stale(KafkaError(code, text), brokers)


@given(text=error_texts, brokers=st.integers(2, 9))
def test_on_a_cluster_a_transport_error_counts_exactly_when_it_names_a_coordinator(
    text: str, brokers: int
) -> None:
    named = any(handle in text for handle in COORDINATOR_HANDLES)
    assert makes_producer_stale(KafkaError(KafkaError._TRANSPORT, text), brokers) is named


def test_the_loop_counts_the_brokers_and_keeps_its_producer_when_one_node_of_a_cluster_goes() -> None:
    broker = FakeBroker()
    fill(broker, 10)
    h = harness(EchoProcessor(), broker=broker, brokers=3)
    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert h.loop._brokers == 3

    h.loop._on_producer_error(NODE_LOST)  # a partition leader's node: librdkafka moves to the new leader
    h.loop._on_consumer_error(NODE_LOST)
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 15)
    assert len(h.producers) == 1

    h.loop._on_producer_error(TXN_COORDINATOR_LOST)  # the handle librdkafka #5511 can leave dead
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 20)
    assert len(h.producers) == 2
    assert h.loop._brokers == 3  # counted once per loop, not again by the new producer
    assert outputs(h) == expected(range(20)) and dead_letters(h) == []


def test_a_broker_count_that_fails_keeps_the_one_broker_rule() -> None:
    broker = FakeBroker()
    fill(broker, 5)
    h = harness(EchoProcessor(), broker=broker, brokers=3)
    # The first producer's count has already run; make the loop count again through a failing call.
    h.loop._brokers = 0
    first = h.producers[0]
    first.faults["list_topics"] = [kafka_exception(KafkaError._TRANSPORT)]
    assert h.loop._count_brokers(h.loop.producer) == 0
    h.drive(until=lambda: h.committed_offset("t.in") == 5)
    h.loop._on_consumer_error(NODE_LOST)
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert len(h.producers) == 2  # unknown size: any lost connection replaced it, as on one broker
    assert h.loop._brokers == 3  # and the new producer counted the cluster
