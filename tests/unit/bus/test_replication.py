"""Replication settings judged against a cluster: what is refused, what only warns, what topics carry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.bus.replication import ClusterFacts, default_min_insync, judge, topic_config
from services.bus.topics import internal_specs, min_insync, replicated_config
from services.config import Settings

SAFE_BROKER = {
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "offsets.topic.replication.factor": "3",
    "unclean.leader.election.enable": "false",
}
CLUSTER = ClusterFacts(3, SAFE_BROKER)


def test_the_recommended_cluster_passes_without_warnings() -> None:
    verdict = judge(3, 2, CLUSTER)
    assert verdict.problems == [] and verdict.warnings == []


def test_the_single_dev_broker_passes() -> None:
    single = ClusterFacts(1, {**SAFE_BROKER, "transaction.state.log.replication.factor": "1"})
    assert judge(1, 1, single).problems == []
    assert judge(1, 1, single).warnings == []


def test_min_isr_one_with_rf_three_is_refused_with_the_fix() -> None:
    (problem,) = judge(3, 1, CLUSTER).problems
    assert "min.insync.replicas 1 with replication factor 3" in problem
    assert "SWITCHYARD_MIN_INSYNC_REPLICAS=2" in problem


def test_rf_greater_than_the_brokers_is_refused() -> None:
    (problem,) = judge(3, 2, ClusterFacts(1, SAFE_BROKER)).problems
    assert "SWITCHYARD_REPLICATION_FACTOR is 3 but the cluster has 1 broker(s)" in problem


def test_min_isr_above_rf_is_refused() -> None:
    (problem,) = judge(2, 3, CLUSTER).problems
    assert "more than the replication factor 2" in problem


def test_unsafe_broker_internals_are_each_named() -> None:
    unsafe = {
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "offsets.topic.replication.factor": "1",
        "unclean.leader.election.enable": "true",
    }
    problems = judge(3, 2, ClusterFacts(3, unsafe)).problems
    assert len(problems) == 4
    for key in unsafe:
        assert any(key in p for p in problems), key


def test_rf_one_on_a_cluster_and_isr_equal_rf_only_warn() -> None:
    assert judge(1, 1, CLUSTER).problems == []
    assert "replication factor 1 on a 3-broker cluster" in judge(1, 1, CLUSTER).warnings[0]
    assert judge(3, 3, CLUSTER).problems == []
    assert "one broker down stops every write" in judge(3, 3, CLUSTER).warnings[0]


def test_unreadable_broker_config_warns_instead_of_passing_silently() -> None:
    verdict = judge(3, 2, ClusterFacts(3, {}))
    assert verdict.problems == []
    assert "could not read the broker's configuration" in verdict.warnings[0]


@given(
    rf=st.integers(1, 7),
    isr=st.integers(1, 7),
    brokers=st.integers(1, 7),
    txn_rf=st.integers(1, 5),
    txn_isr=st.integers(1, 5),
    offsets_rf=st.integers(1, 5),
    unclean=st.booleans(),
)
def test_accepted_settings_keep_two_copies_of_every_acknowledged_write(
    rf: int, isr: int, brokers: int, txn_rf: int, txn_isr: int, offsets_rf: int, unclean: bool
) -> None:
    config = {
        "transaction.state.log.replication.factor": str(txn_rf),
        "transaction.state.log.min.isr": str(txn_isr),
        "offsets.topic.replication.factor": str(offsets_rf),
        "unclean.leader.election.enable": str(unclean).lower(),
    }
    verdict = judge(rf, isr, ClusterFacts(brokers, config))
    if not verdict.problems:
        assert rf <= brokers and isr <= rf
        if rf > 1:  # replicated: every acknowledged write, marker and offset has two copies
            assert isr >= 2 and txn_rf >= 2 and txn_isr >= 2 and offsets_rf >= 2 and not unclean
    safe = rf <= brokers and isr <= rf and (rf == 1 or (isr >= 2 and min(txn_rf, txn_isr, offsets_rf) >= 2))
    assert (not verdict.problems) == (safe and (rf == 1 or not unclean))


def test_topics_carry_the_settings_replication() -> None:
    settings = Settings(kafka_bootstrap_servers="x:1", replication_factor=3)
    assert min_insync(settings) == default_min_insync(3) == 2
    for spec in internal_specs(settings):
        assert spec.replication == 3
        assert spec.config["min.insync.replicas"] == "2"
        assert spec.config["unclean.leader.election.enable"] == "false"
    compacted = [s for s in internal_specs(settings) if s.name.endswith(".router.state")]
    assert compacted[0].config["cleanup.policy"] == "compact"
    explicit = Settings(kafka_bootstrap_servers="x:1", replication_factor=5, min_insync_replicas=3)
    assert (
        replicated_config(explicit)
        == topic_config(5, 3)
        == {
            "min.insync.replicas": "3",
            "unclean.leader.election.enable": "false",
        }
    )


def test_unreplicated_topics_keep_their_configs_unchanged() -> None:
    settings = Settings(kafka_bootstrap_servers="x:1")
    assert replicated_config(settings) == {}
    specs = {s.name: s for s in internal_specs(settings)}
    assert specs["wf.inbox"].config == {} and specs["wf.inbox"].replication == 1
