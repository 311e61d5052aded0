"""Contracts: the Avro schema of every record on every topic, and their Confluent-framed (de)serialisation."""
