"""Which lost connections make a transactional producer untrustworthy, on one broker or a cluster.

After a broker restart librdkafka may keep a dead coordinator handle cached and block
``send_offsets_to_transaction`` past its timeout (librdkafka #5456/#5511), so the transactional
loop replaces a producer whose client reported the loss instead of calling it again. On a single
broker every lost connection is that loss. On a cluster a lost connection to one node is routine:
librdkafka moves produce and fetch traffic to the new leaders itself, and replacing every
producer whenever one node goes made each loop rewind, re-initialise and wait for the
transaction coordinator's move (up to the controller's ``broker.session.timeout.ms``), twice when
the new producer's own bootstrap connection to the dead node failed too. There, only a loss that
touches a coordinator connection (the handles #5511 can leave dead) or all brokers counts.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

#: librdkafka's names for its logical coordinator connections, as they start its error strings
#: ("TxnCoordinator/2: Disconnected", "GroupCoordinator: Connect to ... failed").
COORDINATOR_HANDLES = ("TxnCoordinator", "GroupCoordinator")


def makes_producer_stale(error: KafkaError, brokers: int) -> bool:
    """Whether a client's error report (producer or the loop's consumer) means the loop must
    replace its transactional producer, on a cluster of ``brokers`` nodes (0 or 1: one broker, or
    not known — the safe, old rule)."""
    code = error.code()
    if code == KafkaError._ALL_BROKERS_DOWN:
        return True
    if code != KafkaError._TRANSPORT:
        return False
    if brokers <= 1:
        return True
    return any(handle in error.str() for handle in COORDINATOR_HANDLES)
