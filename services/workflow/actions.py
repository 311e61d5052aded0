"""Names of the built-in actions, for validating definitions before an executor is at hand.

The executor's plugin registry is the authority at run time; this list mirrors its built-ins so
``switchyard workflow validate`` can catch typos offline. Keep the two in sync.
"""

from __future__ import annotations

#: The built-in actions that declare ``mutates = False`` (they change nothing outside the run):
#: what a ``context:`` entry may run. ``http.request`` and ``firm.update_record`` mutate.
BUILTIN_READ_ACTIONS: frozenset[str] = frozenset(
    {"noop", "echo", "sleep", "fail", "firm.get_record", "firm.query"}
)
BUILTIN_ACTIONS: frozenset[str] = frozenset(
    {"noop", "echo", "sleep", "fail", "http.request", "firm.update_record"} | BUILTIN_READ_ACTIONS
)
