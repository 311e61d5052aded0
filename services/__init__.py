"""Switchyard: a Kafka-native, multi-tenant workflow engine."""

__version__ = "0.1.0"
