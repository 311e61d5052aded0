"""Whether a cluster's replication settings can keep Switchyard's exactly-once guarantee (pure).

Exactly-once rests on a committed transaction surviving the loss of any one broker: its records,
its markers in the transaction state log and the consumer offsets it committed. That takes every
one of those topics replicated with ``min.insync.replicas`` of at least 2 (an acknowledgement then
means two copies) and no unclean leader election (which elects a replica missing committed
records). Replication factor 1 keeps the guarantee as long as the one copy's disk lives (the dev
broker), so it is allowed, with a warning on a multi-broker cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TXN_RF = "transaction.state.log.replication.factor"
TXN_MIN_ISR = "transaction.state.log.min.isr"
OFFSETS_RF = "offsets.topic.replication.factor"
UNCLEAN = "unclean.leader.election.enable"


@dataclass(frozen=True)
class ClusterFacts:
    """What the broker says about itself: how many brokers, and one broker's effective config
    (empty when it could not be read, e.g. without DescribeConfigs on the cluster)."""

    brokers: int
    broker_config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    problems: list[str]  # exactly-once cannot be guaranteed (or topics cannot be made): refuse
    warnings: list[str]  # allowed, with a cost worth knowing


def default_min_insync(replication_factor: int) -> int:
    """2 when replicated (an acknowledged write has two copies), else 1."""
    return 1 if replication_factor == 1 else 2


def topic_config(replication_factor: int, min_insync: int) -> dict[str, str]:
    """Per-topic settings that pin the guarantee whatever the broker's defaults are."""
    if replication_factor == 1:
        return {}
    return {"min.insync.replicas": str(min_insync), UNCLEAN: "false"}


def _int(config: Mapping[str, str], key: str) -> int | None:
    try:
        return int(config[key])
    except (KeyError, ValueError):
        return None


def judge(replication_factor: int, min_insync: int, facts: ClusterFacts) -> Verdict:
    """Every reason these settings on this cluster cannot guarantee exactly-once, and the warnings."""
    rf, isr, brokers = replication_factor, min_insync, facts.brokers
    problems: list[str] = []
    warnings: list[str] = []
    if rf > brokers:
        problems.append(
            f"SWITCHYARD_REPLICATION_FACTOR is {rf} but the cluster has {brokers} broker(s): "
            f"topics cannot be created with it (set it to at most {brokers})"
        )
    if isr > rf:
        problems.append(
            f"SWITCHYARD_MIN_INSYNC_REPLICAS is {isr}, more than the replication factor {rf}: "
            "no write could ever be acknowledged"
        )
    elif rf > 1 and isr < 2:
        problems.append(
            f"min.insync.replicas {isr} with replication factor {rf}: a committed transaction may be "
            "on one broker only, and losing that broker loses it (set SWITCHYARD_MIN_INSYNC_REPLICAS=2)"
        )
    elif rf > 1 and isr == rf:
        warnings.append(
            f"min.insync.replicas equals the replication factor ({rf}): one broker down stops every "
            "write until it is back (a replication factor one above it tolerates that)"
        )
    if rf == 1 and brokers > 1:
        warnings.append(
            f"replication factor 1 on a {brokers}-broker cluster: a broker down makes its partitions "
            "unavailable and a lost disk loses their records (set SWITCHYARD_REPLICATION_FACTOR=3)"
        )
    config = facts.broker_config
    if rf > 1 and config:
        txn_rf, txn_isr, offsets_rf = (
            _int(config, TXN_RF),
            _int(config, TXN_MIN_ISR),
            _int(config, OFFSETS_RF),
        )
        if txn_rf is not None and txn_rf < 2:
            problems.append(
                f"the broker's {TXN_RF} is {txn_rf}: transaction markers live on one broker, and "
                "losing it loses which transactions committed (set it to 3)"
            )
        if txn_isr is not None and txn_isr < 2:
            problems.append(
                f"the broker's {TXN_MIN_ISR} is {txn_isr}: a transaction's commit may be "
                "acknowledged with one copy (set it to 2)"
            )
        if offsets_rf is not None and offsets_rf < 2:
            problems.append(
                f"the broker's {OFFSETS_RF} is {offsets_rf}: offsets committed in transactions "
                "live on one broker, and losing it re-runs committed input (set it to 3)"
            )
        if config.get(UNCLEAN, "false").lower() == "true":
            problems.append(
                f"the broker's {UNCLEAN} is true: the transaction state log and offsets topic may "
                "elect a replica that lacks committed records (set it to false)"
            )
    elif rf > 1:
        warnings.append(
            "could not read the broker's configuration: the transaction state log's and offsets "
            "topic's replication are unchecked"
        )
    return Verdict(problems, warnings)
