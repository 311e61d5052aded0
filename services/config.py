"""Settings: every knob of Switchyard, read from the environment (prefix ``SWITCHYARD_``).

The two connection strings also honour the conventional un-prefixed variables
``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` so that the same environment works
for Switchyard, its tests and the usual tooling. Extra librdkafka properties pass through
``SWITCHYARD_KAFKA_OPTIONS`` as JSON (for example ``{"security.protocol": "SASL_SSL"}``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from services.bus.kafka_logs import KAFKA_LOG


def _text_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, or plain comma-separated values."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg}); or write plain comma-separated values") from None
    return [item.strip() for item in text.split(",") if item.strip()]


TextList = Annotated[list[str], NoDecode, BeforeValidator(_text_list)]
"""A list of strings read from the environment as ``a@x,b@y`` or as JSON ``["a@x", "b@y"]``."""


def _public_keys(value: dict[str, str]) -> dict[str, str]:
    """Each value must be the base64 of a raw 32-byte Ed25519 public key."""
    for key_id, public in value.items():
        try:
            raw = base64.b64decode(public.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"operator key {key_id!r} is not the base64 of a raw 32-byte Ed25519 key")
    return value


KAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
STATE_RECORD_OVERHEAD = 96 * 1024  # run state besides trigger and outputs: 200 steps' records at most


class Settings(BaseSettings):
    """Process-wide configuration. Instantiate once per process (see :func:`get_settings`)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers. Unset: the local launcher's broker (switchyard dev up).",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SWITCHYARD_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL URL (postgresql://...). Unset: the local launcher's server.",
    )
    firm_database_url: str | None = Field(
        default=None, description="Database of the firm.update_record action; unset: database_url."
    )
    kafka_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra librdkafka properties merged into every client (JSON object).",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password, merged as sasl.password when set."
    )
    topic_prefix: str = Field(default="wf", description="Prefix of every internal topic name.")
    internal_partitions: int = Field(default=12, ge=1, description="Partitions of the internal topics.")
    replication_factor: int = Field(
        default=1,
        ge=1,
        description="Replication factor of created topics (3 on a cluster; `topics ensure` checks it"
        " against the brokers).",
    )
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of created topics when replicated (default 2): below 2,"
        " `topics ensure` refuses (an acknowledged write could have one copy).",
    )
    max_trigger_bytes: int = Field(default=256 * 1024, ge=1024, description="Largest accepted trigger.")
    max_run_output_bytes: int = Field(
        default=576 * 1024,
        ge=1024,
        description=(
            "Largest total of step outputs one run keeps (they live in the router's state record);"
            " a step whose output would pass it fails with run_output_too_large."
        ),
    )
    max_context_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description=(
            "Largest total of what a run's `context:` reads return (it also counts toward"
            " max_run_output_bytes); a read that would pass it fails the run with context_too_large."
        ),
    )
    firm_read_max_rows: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Largest `limit` firm.query accepts (its default limit is 100 or this, the lower).",
    )
    firm_read_max_bytes: int = Field(
        default=128 * 1024,
        ge=1024,
        description=(
            "Largest JSON result of firm.get_record / firm.query; a larger one fails the step with"
            " result_too_large, not retried."
        ),
    )
    firm_statement_timeout_ms: int = Field(
        default=5000,
        ge=100,
        description="PostgreSQL statement_timeout of a firm read (also cut to the attempt's deadline).",
    )
    commit_interval_ms: int = Field(
        default=100,
        ge=1,
        description=(
            "Longest a loop waits for a first record before its periodic tick; a batch is committed"
            " as soon as it is taken (at once when idle, what was fetched meanwhile when busy)."
        ),
    )
    transaction_timeout_ms: int = Field(
        default=15_000, ge=1000, description="Kafka transaction timeout; bounds the stall after a crash."
    )
    instance_id: str | None = Field(
        default=None, description="Stable id of this process (transactional ids); default: hostname-pid."
    )
    group_protocol: Literal["auto", "classic", "consumer"] = Field(
        default="auto",
        description=(
            "Consumer group protocol: consumer (KIP-848; the broker's group.consumer.session.timeout.ms"
            " bounds kill recovery), classic (session.timeout.ms 10 s), or auto: consumer when the"
            " broker offers it with a session of at most 10 s and heartbeat of at most 1 s."
        ),
    )
    finished_run_retention_s: float = Field(
        default=6 * 3600,
        gt=0,
        description=(
            "How long finished runs stay in router memory: the dedupe and replay window without"
            " DATABASE_URL; with it, the most the projector may lag (the run history is read)."
        ),
    )
    restore_deadline_s: float = Field(
        default=300,
        gt=0,
        description=(
            "Longest the router core may take to read a newly assigned partition back from its"
            " changelog; past it the loop aborts, rewinds and tries again."
        ),
    )
    max_replays_per_run: int = Field(default=3, ge=0, description="Replays allowed per run (bound).")
    max_redrive_per_call: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description=(
            "Dead letters one `switchyard dlq redrive` may send (a bulk re-drive matching more is refused)."
        ),
    )
    max_replay_state_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description=(
            "Replay state (trigger data, step outputs) kept by a tenant's failed and cancelled runs,"
            " per internal partition; past it the oldest shrink to dedupe records (no longer"
            " replayable). Succeeded runs keep none."
        ),
    )
    global_operators: TextList = Field(
        default_factory=list,
        description="Ignored since control commands are signed: see operator_keys.",
    )
    operator_keys: Annotated[dict[str, str], AfterValidator(_public_keys)] = Field(
        default_factory=dict,
        description="Global operators' Ed25519 public keys (JSON object key id -> base64 raw key): "
        "they may replay/cancel any tenant's runs, and a gateway among them (the console) may "
        "act on behalf of a named operator.",
    )
    operator_key_file: str | None = Field(
        default=None,
        description="Default private key file signing `replay`/`cancel` (and the console's commands).",
    )
    operator_key_id: str | None = Field(
        default=None, description="Key id of operator_key_file (default: the file name without .key)."
    )
    control_window_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="A control command issued further than this from the router's clock is refused "
        "as stale; command ids are remembered for as long.",
    )
    secret_providers: TextList = Field(
        default_factory=lambda: ["env", "file"],
        description=(
            "Secret providers the executor asks for ${{ secrets.NAME }}, in order: built-ins env"
            " (SWITCHYARD_SECRET_<tenant>_<NAME>) and file (SWITCHYARD_SECRETS_DIR), or plugins."
        ),
    )
    secrets_dir: str | None = Field(
        default=None,
        description="Directory of per-tenant secret files <dir>/<tenant>/<NAME> (file provider).",
    )
    max_batch: int = Field(default=500, ge=1, description="Most input records per transaction.")
    poison_after_failures: int = Field(
        default=3,
        ge=1,
        description=(
            "Failures of the same batch, attributable to its records, after which the loop bisects it"
            " and dead-letters the record that fails (poison_record)."
        ),
    )
    stall_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A partition with records but no commit progress for this long fails /readyz (stalled).",
    )
    max_step_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        le=24 * 3600,
        description=(
            "Longest timeout a step may declare, in seconds: publishing refuses a definition with a"
            " longer one, and the executor ends any attempt at this limit (kind timeout)."
        ),
    )
    max_subworkflow_depth: int = Field(
        default=5,
        ge=1,
        le=50,
        description=(
            "Deepest nesting of sub-workflow runs (a triggered run is depth 0, its child 1): a"
            " `workflow:` step whose child would be deeper fails with subworkflow_too_deep."
        ),
    )
    deadline_grace_ms: int = Field(
        default=2_000,
        ge=0,
        description=(
            "How long the router waits past a step attempt's deadline before timing it out itself,"
            " so that the executor's own timeout report (sent at the deadline) normally wins."
        ),
    )
    event_wait_candidates: int = Field(
        default=1_000,
        ge=1,
        le=1_000_000,
        description=(
            "Waiting runs (wait_for) one event is tried on per router partition, oldest waits first;"
            " the others do not see that event (counted: switchyard_event_deliveries_total, over_cap)."
        ),
    )
    executor_max_in_flight: int = Field(
        default=2_000,
        ge=1,
        description="Running attempts at which an executor pauses its partitions (resumes below half).",
    )
    metrics_port: int = Field(default=0, ge=0, description="Port of /metrics, /healthz, /readyz (0: off).")
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address /metrics, /healthz and /readyz listen on: loopback unless a scraper on"
        " another host needs them (0.0.0.0 in containers).",
    )
    egress_allow_private: bool = Field(
        default=False,
        description="Development and tests only: let http.request reach loopback, private, link-local"
        " and reserved addresses for every tenant (default: refused, egress_denied).",
    )
    log_level: str = Field(default="INFO", description="Root log level.")
    log_format: str = Field(default="json", description="'json' (structured) or 'text'.")
    dev_kafka_port: int = Field(default=29092, description="Port of the locally launched broker.")
    dev_kafka_controller_port: int = Field(default=29093, description="Controller port of that broker.")

    @model_validator(mode="after")
    def _state_fits_in_a_record(self) -> Settings:
        """A run's state record holds its trigger and its step outputs: it must stay producible, or
        the router would fail the same transaction forever."""
        limit = self.message_max_bytes
        needed = self.max_trigger_bytes + self.max_run_output_bytes + STATE_RECORD_OVERHEAD
        if needed > limit:
            raise ValueError(
                f"SWITCHYARD_MAX_TRIGGER_BYTES ({self.max_trigger_bytes}) + SWITCHYARD_MAX_RUN_OUTPUT_BYTES"
                f" ({self.max_run_output_bytes}) + {STATE_RECORD_OVERHEAD} bytes of run state exceed the"
                f" largest record the producers may write ({limit}, librdkafka message.max.bytes): lower"
                " them, or raise message.max.bytes in SWITCHYARD_KAFKA_OPTIONS together with the"
                " topics' max.message.bytes"
            )
        return self

    @property
    def message_max_bytes(self) -> int:
        """librdkafka's ``message.max.bytes`` as configured (the producers' own record limit)."""
        return int(self.kafka_options.get("message.max.bytes", KAFKA_MESSAGE_MAX_BYTES))

    def kafka_config(self) -> dict[str, Any]:
        """Base librdkafka configuration shared by every client."""
        if not self.kafka_bootstrap_servers:
            raise RuntimeError(
                "No Kafka broker configured: set KAFKA_BOOTSTRAP_SERVERS, or run `switchyard dev up` "
                "and use the address it prints."
            )
        # librdkafka logs through Python logging (services/bus/kafka_logs.py), not straight to stderr
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers, "logger": KAFKA_LOG}
        conf.update(self.kafka_options)
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return conf


class SettingsInvalid(Exception):
    """The environment holds invalid settings; the message is one line naming each variable."""


def _variables(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return " / ".join(str(choice) for choice in alias.choices)
    return f"SWITCHYARD_{field.upper()}"


def settings_error_message(exc: ValidationError | SettingsError) -> str:
    """One line saying which variables are invalid and why (never their values: some are secrets)."""
    if isinstance(exc, SettingsError):
        match = re.search(r'field "([^"]+)"', str(exc))
        field = match.group(1) if match else "?"
        why = f"not valid JSON ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
        return f"invalid setting {_variables(field)}: {why}"
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            problems.append(f"{_variables(str(error['loc'][0]))}: {message}")
        else:
            problems.append(message)
    return "invalid setting " + "; ".join(problems)


def load_settings() -> Settings:
    """The settings from the environment; raises :class:`SettingsInvalid` (one clear line)."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise SettingsInvalid(settings_error_message(exc)) from None


def default_instance_id(settings: Settings) -> str:
    """This process's instance id: ``SWITCHYARD_INSTANCE_ID``, else hostname-pid."""
    return settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
