"""The action plugin interface: what an action is, what it receives, how it fails, how it is found.

An action is any object with

- ``name`` — the name workflow steps use (``echo``, ``http.request``, ``firm.update_record``);
- ``Input`` — a pydantic model its inputs must validate against (a validation error fails the
  step non-retryably with error kind ``invalid_input``);
- ``scopes`` — the permission scopes it needs (e.g. ``firm_data:write``);
- ``mutates_firm_data`` — whether it changes the tenant's data (it then needs ``firm_data:write``,
  declared by the workflow and granted to the tenant, whatever its ``scopes`` say);
- ``async def run(self, ctx, inputs) -> dict`` — does the work and returns JSON-serialisable output.

and optionally

- ``mutates`` (default True, for safety) — whether running it may change anything outside the run
  (a record, a remote system, a message sent). Only an action that declares ``mutates = False``
  may read a definition's ``context:`` (read once at run start and kept for replays); the
  executor refuses any other there (``context_not_read_only``). An action that
  ``mutates_firm_data`` cannot declare ``mutates = False``;
- ``external`` (default False) — it calls a system outside the firm: it is subject to the
  tenant's external-call rate limit and to a circuit breaker;
- ``def target(self, inputs) -> str`` — what it talks to (a host, a database), keying its
  circuit breaker per (tenant, action, target); defining it also puts the action behind a breaker.

To fail, ``run`` raises :class:`ActionError` with an error kind and whether a retry may help; any
other exception is reported as kind ``action_error``, retryable. Side effects are at-least-once:
an attempt can run again after a crash, so actions pass ``ctx.idempotency_key`` to the outside
world.

Plugins outside this package register under the entry-point group ``switchyard.actions``::

    [project.entry-points."switchyard.actions"]
    "firm.update_record" = "firm_actions:UpdateRecord"

The entry point may name a class (instantiated without arguments) or an instance.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from services.contracts.records import JsonObject
from services.observability.logs import BoundLogger

ENTRY_POINT_GROUP = "switchyard.actions"
# Same rule as a workflow step's ``action`` field (services.workflow.models.ACTION_PATTERN).
ACTION_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")

log = logging.getLogger(__name__)


class ActionError(Exception):
    """Raised by an action to report a failure with a specific error kind.

    ``reached_target=False``: the call never reached its target (a local resource, such as a
    connection pool shared with other tenants, was exhausted). Such a failure says nothing about
    the target, so it does not count against the target's circuit breaker."""

    def __init__(
        self, kind: str, message: str, retryable: bool = True, *, reached_target: bool = True
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.reached_target = reached_target


@dataclass(frozen=True)
class ActionContext:
    """Everything an attempt knows about itself besides its inputs."""

    tenant: str
    run_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    deadline: float
    """Epoch seconds after which the attempt is abandoned (error kind ``timeout``)."""
    correlation_id: str
    log: BoundLogger
    workflow: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    """Permission scopes the workflow declared."""

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.time())


@runtime_checkable
class Action(Protocol):
    """What the executor needs of an action (see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def Input(self) -> type[BaseModel]: ...

    @property
    def scopes(self) -> frozenset[str]: ...

    @property
    def mutates_firm_data(self) -> bool: ...

    async def run(self, ctx: ActionContext, inputs: Any, /) -> JsonObject: ...


class BaseAction:
    """Convenience base class: no scopes, does not mutate firm data, but may mutate something else
    (``mutates``: a subclass that only reads says ``mutates = False``). Subclasses set
    ``name``/``Input``."""

    name: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    scopes: ClassVar[frozenset[str]] = frozenset()
    mutates_firm_data: ClassVar[bool] = False
    mutates: ClassVar[bool] = True
    external: ClassVar[bool] = False

    async def aclose(self) -> None:
        """Release resources (HTTP clients, pools) bound to the running event loop."""


def mutates(action: Any) -> bool:
    """Whether ``action`` may change anything outside the run: unless it says ``mutates = False``
    (an action that predates the attribute is assumed to), and always if it mutates firm data."""
    return bool(getattr(action, "mutates", True)) or bool(getattr(action, "mutates_firm_data", False))


class ActionLoadError(RuntimeError):
    """An action could not be loaded or is malformed; the message says which and why."""


class DuplicateActionError(ActionLoadError):
    """Two actions claim the same name."""


def _check_action(action: Any, source: str) -> None:
    name = getattr(action, "name", None)
    if not isinstance(name, str) or not ACTION_NAME.fullmatch(name):
        raise ActionLoadError(
            f"{source}: action name {name!r} is invalid "
            "(lowercase words of [a-z0-9_] separated by dots, e.g. 'http.request')"
        )
    model = getattr(action, "Input", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ActionLoadError(f"{source}: action {name!r} has no pydantic Input model (got {model!r})")
    scopes = getattr(action, "scopes", None)
    if not isinstance(scopes, frozenset) or not all(isinstance(s, str) for s in scopes):
        raise ActionLoadError(f"{source}: action {name!r}: scopes must be a frozenset of strings")
    if not isinstance(getattr(action, "mutates_firm_data", None), bool):
        raise ActionLoadError(f"{source}: action {name!r}: mutates_firm_data must be a bool")
    if not isinstance(getattr(action, "mutates", True), bool):
        raise ActionLoadError(f"{source}: action {name!r}: mutates must be a bool")
    if action.mutates_firm_data and getattr(action, "mutates", True) is False:
        raise ActionLoadError(
            f"{source}: action {name!r} declares mutates_firm_data = True and mutates = False;"
            " an action that changes firm data mutates"
        )
    if not isinstance(getattr(action, "external", False), bool):
        raise ActionLoadError(f"{source}: action {name!r}: external must be a bool")
    target = getattr(action, "target", None)
    if target is not None and not callable(target):
        raise ActionLoadError(f"{source}: action {name!r}: target must be a method target(inputs) -> str")
    if not inspect.iscoroutinefunction(getattr(action, "run", None)):
        raise ActionLoadError(f"{source}: action {name!r}: run must be an `async def` method")


class ActionRegistry:
    """Actions by name: the built-ins, ``switchyard.actions`` entry points, and explicit extras."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}
        self._sources: dict[str, str] = {}

    @classmethod
    def load(
        cls, *, extra: Iterable[Action] = (), builtins: bool = True, entry_points: bool = True
    ) -> ActionRegistry:
        """The registry of a running executor. ``extra`` adds actions explicitly (tests, embedding)."""
        registry = cls()
        if builtins:
            from services.actions import builtin_actions

            for action in builtin_actions():
                registry.register(action, source=f"built-in {type(action).__module__}")
        if entry_points:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                registry.register(_load_entry_point(ep), source=_describe(ep), expected_name=ep.name)
        for action in extra:
            registry.register(action, source=f"explicit {type(action).__module__}.{type(action).__name__}")
        return registry

    def register(self, action: Action, *, source: str = "explicit", expected_name: str | None = None) -> None:
        """Add ``action``; a second action with the same name is an error naming both sources."""
        _check_action(action, source)
        if expected_name is not None and expected_name != action.name:
            raise ActionLoadError(
                f"{source}: entry point is named {expected_name!r} but the action calls itself "
                f"{action.name!r}; the two must match"
            )
        if action.name in self._actions:
            raise DuplicateActionError(
                f"action {action.name!r} is registered twice: by {self._sources[action.name]} "
                f"and by {source}; rename one of them or uninstall one of the packages"
            )
        self._actions[action.name] = action
        self._sources[action.name] = source

    def get(self, name: str) -> Action | None:
        return self._actions.get(name)

    def source(self, name: str) -> str | None:
        """Where the action came from (for diagnostics)."""
        return self._sources.get(name)

    def names(self) -> frozenset[str]:
        """Every registered action name (what workflow validation accepts)."""
        return frozenset(self._actions)

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Iterator[Action]:
        return iter(list(self._actions.values()))

    def __len__(self) -> int:
        return len(self._actions)

    async def aclose(self) -> None:
        """Let every action release what it holds on the running event loop."""
        for action in self:
            closer = getattr(action, "aclose", None)
            if closer is None:
                continue
            try:
                await closer()
            except Exception:
                log.warning("action close failed", extra={"action": action.name}, exc_info=True)


def _describe(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    where = f" (distribution {dist.name} {dist.version})" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r}{where}"


def _load_entry_point(ep: metadata.EntryPoint) -> Action:
    try:
        obj = ep.load()
    except Exception as exc:
        raise ActionLoadError(f"{_describe(ep)} cannot be imported: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise ActionLoadError(
                f"{_describe(ep)}: {obj.__name__}() failed: {type(exc).__name__}: {exc}"
            ) from exc
    action: Action = obj
    return action
