"""Unit tests of services.observability, the dashboards and the alert rules."""
