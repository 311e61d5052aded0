"""Whether a command's identity fields could be what the engine or an operator wrote.

A command read from Kafka names a tenant and carries ids and names that the engine copies into
what it writes next (results, headers, dead letters, history). A forged one must not make that
unwritable, so the tenant must be a tenant id and each field stay within its length. One check
for the control commands intake forwards (:mod:`services.control.plausibility`) and the step
commands the executor runs (:mod:`services.executor.processor`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.bus.topics import TENANT_ID


def implausible_identity(record: Mapping[str, object], limits: Mapping[str, int]) -> str | None:
    """Why ``record``'s tenant or a field named in ``limits`` (characters) cannot be genuine, or None."""
    tenant = str(record["tenant"])
    if not TENANT_ID.fullmatch(tenant):
        shown = f"{len(tenant)} characters" if len(tenant) > 64 else repr(tenant)
        return f"tenant is not a tenant id ({shown})"
    for name, limit in limits.items():
        value = record.get(name)
        if isinstance(value, str) and len(value) > limit:
            return f"{name} is {len(value)} characters long; the most a command may carry is {limit}"
    return None
