"""Alembic migrations of the projector's schema (driven by :func:`services.projector.db.upgrade_database`)."""
