"""Every Kafka client's configuration routes librdkafka's log lines through Python logging."""

from __future__ import annotations

from services.bus import clients
from services.bus.kafka_logs import KAFKA_LOG
from services.config import Settings


def test_every_client_configuration_carries_the_python_logger() -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9")
    for conf in (
        settings.kafka_config(),
        clients.consumer_config(settings, "g"),
        clients.plain_producer_config(settings),
        clients.transactional_producer_config(settings, "t"),
    ):
        assert conf["logger"] is KAFKA_LOG
    assert KAFKA_LOG.name == "switchyard.kafka"
