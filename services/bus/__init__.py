"""The Kafka edge: topic names and specs, partition placement, clients, the transactional loop."""
