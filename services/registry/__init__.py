"""Registries kept on compacted topics: tenants and signed workflow definitions."""
