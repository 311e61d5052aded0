"""Tenants: their configuration (limits, scopes, keyring) and the registry that holds it."""
