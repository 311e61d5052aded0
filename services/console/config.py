"""The console's own settings (prefix ``SWITCHYARD_CONSOLE_``); the engine's come from
:class:`services.config.Settings` (Kafka, topic prefix, ``DATABASE_URL``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_CONSOLE_", extra="ignore")

    secret: SecretStr | None = Field(
        default=None,
        description="Key signing the UI's session cookies. Unset: a random key per process "
        "(sessions end when the console restarts).",
    )
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL for the console's reads (e.g. a read-only role). Unset: DATABASE_URL.",
    )
    grafana_url: str = Field(
        default="http://localhost:3000",
        description="Grafana's base URL: tenant pages link to its tenant dashboard there.",
    )
    session_max_age_s: int = Field(default=8 * 3600, ge=60, description="UI session lifetime.")
    secure_cookies: bool = Field(default=False, description="Send the session cookie over HTTPS only.")
