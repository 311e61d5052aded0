"""Unit tests of the projector's pure parts (no Kafka, no PostgreSQL)."""
