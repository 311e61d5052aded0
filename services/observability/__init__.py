"""Metrics, health endpoints and structured logging."""
