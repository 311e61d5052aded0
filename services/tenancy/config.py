"""A tenant's configuration, as stored (JSON) in the compacted tenants registry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.workflow.signing import Keyring

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_PATTERN)
    status: Literal["active", "suspended"] = "active"
    trigger_partitions: int = Field(3, ge=1, le=1000, description="Partitions of the tenant's trigger topic.")
    slices: int = Field(
        1, ge=1, le=64, description="Partitions of the internal topics the tenant's runs use."
    )
    base_partition: int | None = Field(
        None,
        ge=0,
        description="Pin the tenant's slices to start at this internal partition (dedicated "
        "placement); unset: derived from the tenant id (shared pool).",
    )
    max_concurrent_runs: int = Field(100, ge=1, description="Runs running at once, across all its workflows.")
    trigger_rate: float = Field(100.0, gt=0, description="Triggers accepted per second (token refill rate).")
    trigger_burst: int = Field(200, ge=1, description="Token bucket size for triggers.")
    external_call_rate: float = Field(
        50.0, gt=0, description="External calls per second per executor process (N executors: N times this)."
    )
    max_pending_runs: int = Field(10_000, ge=1, description="Pending runs before intake pauses the tenant.")
    scopes: list[str] = Field(default_factory=list, description="Permission scopes granted to the tenant.")
    operators: list[str] = Field(default_factory=list, description="Who may replay or cancel its runs.")
    egress_allow: list[str] = Field(
        default_factory=list,
        description="Hosts (api.acme.internal, *.acme.internal) and CIDRs (10.1.0.0/16) http.request may "
        "reach although their addresses are private, loopback, link-local or reserved.",
    )
    keyring: Keyring | None = None

    @field_validator("egress_allow")
    @classmethod
    def _egress_entries(cls, entries: list[str]) -> list[str]:
        # Imported here: services.actions loads the executor, which loads this module.
        from services.actions.egress import MAX_ALLOW_ENTRIES, parse_allow_entry

        if len(entries) > MAX_ALLOW_ENTRIES:
            raise ValueError(f"at most {MAX_ALLOW_ENTRIES} egress allow entries")
        for entry in entries:
            parse_allow_entry(entry)  # ValueError says which entry and why
        return [entry.strip() for entry in entries]

    def keyring_or_empty(self) -> Keyring:
        return self.keyring or Keyring(tenant=self.tenant, keys=[])
