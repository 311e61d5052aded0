"""A router's restore waits out the previous owner's open transaction, on the real broker.

The previous owner of a partition (cut off from its group, say by a paused broker) may have sent
its offsets and not yet had its commit answered when the partition moves. Its transaction can
still commit: a restore that stopped at the ``read_committed`` end before it would miss its run
state while the group's offsets would include its inputs (29 history events written twice, with
different content, in a cluster fault run). The restore must end only once that transaction has.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.router.restore import read_changelog
from tests.fixtures.engine import make_settings

pytestmark = pytest.mark.integration


def _zombie(bootstrap: str, prefix: str, unique: str) -> Producer:
    """A transaction of the previous owner: a state record written and the group's offsets for
    the inbox partition sent, the commit not yet asked for."""
    topics = Topics(prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"zombie-{unique}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topics.router_state, key=b"run-1", value=b"state-after-the-batch", partition=0)
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}.router.core"})
    producer.send_offsets_to_transaction(
        [TopicPartition(topics.inbox, 0, 7)], group.consumer_group_metadata(), 30
    )
    group.close()
    producer.flush(30)
    return producer


def _restore_in_background(
    settings_prefix: str, bootstrap: str
) -> tuple[threading.Event, list[bytes], list[BaseException]]:
    settings = make_settings(bootstrap, settings_prefix)
    done, loaded, failed = threading.Event(), [], []

    def run() -> None:
        try:
            read_changelog(settings, [0], lambda _n, _k, value: loaded.append(value or b""), 60)
        except BaseException as exc:  # reported by the test
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, loaded, failed


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_restore_ends_only_once_the_previous_owners_transaction_has(
    kafka_bootstrap: str, unique: str, outcome: str
) -> None:
    prefix = f"t{unique}"
    settings = make_settings(kafka_bootstrap, prefix)
    ensure_topics(admin_client(settings), internal_specs(settings))
    producer = _zombie(kafka_bootstrap, prefix, unique)
    done, loaded, failed = _restore_in_background(prefix, kafka_bootstrap)
    # Finishing while the transaction is open is the defect itself; 3 s is ample for a restore
    # of one record (they take ~0.1 s here), so this cannot pass by being slow.
    assert not done.wait(3), f"the restore ended with a transaction open: loaded {loaded}, {failed}"
    end: Callable[[float], None] = (
        producer.commit_transaction if outcome == "commit" else producer.abort_transaction
    )
    end(30)
    assert done.wait(30), "the restore did not end after the transaction did"
    assert not failed, failed
    assert loaded == ([b"state-after-the-batch"] if outcome == "commit" else [])
