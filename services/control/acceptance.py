"""Whether intake forwards a plausible control command to the router core. Pure: no I/O.

A command is forwarded only when its tenant is registered, it names a run, it is not a bulk
replay (the CLI expands those into one command per run) and :func:`services.control.verify.verify_command`
accepts its signature, key and age. The forwarded command carries the verified identity as its
requester: the audit trail records who signed, never what the sender claimed. Anything else is
refused with a message for people, which intake dead-letters ``control_refused``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from services.contracts.records import ControlCommand
from services.control.verify import CommandRefused, verify_command
from services.tenancy.config import TenantConfig


def accept(
    command: ControlCommand,
    tenant: TenantConfig | None,
    global_keys: Mapping[str, str],
    now_ms: int,
    window_ms: int,
    foreign_operator_key: Callable[[str], bool],
) -> ControlCommand | str:
    """The command to forward to the run's inbox partition, or why it is refused.

    ``tenant`` is the registered configuration of the command's tenant (None: not registered);
    ``foreign_operator_key`` as in :func:`~services.control.verify.verify_command`."""
    who = f"{command['kind']} by {command['requester']!r}"
    if tenant is None:
        return f"{who}: tenant {command['tenant']!r} is not registered"
    if command["kind"] == "replay_bulk":
        return f"{who}: bulk replays are expanded into one command per run by `switchyard replay --tenant`"
    if not command["run_id"]:
        return f"{who}: the command names no run"
    try:
        verified = verify_command(command, tenant, global_keys, now_ms, window_ms, foreign_operator_key)
    except CommandRefused as exc:
        return f"{exc.reason.value}: {who} (unverified): {exc.message}"
    return {**command, "requester": verified.requester}


def foreign_operator_key(
    tenants: Callable[[], Iterable[tuple[str, TenantConfig]]] | None, tenant_id: str
) -> Callable[[str], bool]:
    """Whether another tenant than ``tenant_id`` holds an operator key of a given id (only to name
    a refusal ``foreign_key``); ``tenants`` lists every registered tenant (None: unknown)."""

    def foreign(key_id: str) -> bool:
        if tenants is None:
            return False
        return any(
            other != tenant_id
            and (entry := config.keyring_or_empty().get(key_id)) is not None
            and entry.role == "operator"
            for other, config in tenants()
        )

    return foreign
