"""firm.update_record's database comes from the settings, read at each call."""

from __future__ import annotations

import pytest

from services.actions.firm import firm_database_url


def test_its_own_setting_first_then_the_engine_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://engine/db")
    monkeypatch.setenv("SWITCHYARD_FIRM_DATABASE_URL", "postgresql://firm/db")
    assert firm_database_url() == "postgresql://firm/db"
    monkeypatch.delenv("SWITCHYARD_FIRM_DATABASE_URL")
    assert firm_database_url() == "postgresql://engine/db"  # not cached: the change is seen
    monkeypatch.delenv("DATABASE_URL")
    assert firm_database_url() is None
