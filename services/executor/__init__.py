"""The stateless step executor: StepCommand → action (via the plugin registry) → StepResult.

- :mod:`.plugins` — the action interface (``Action``, ``ActionContext``, ``ActionError``) and
  ``ActionRegistry`` (built-ins + ``switchyard.actions`` entry points);
- :mod:`.execute` — ``execute_command``: one attempt, pure of Kafka;
- :mod:`.processor` — the transactional-loop processor (batches, DLQ, results in order);
- :mod:`.service` — ``run_executor``, the process entry point.
"""

from services.executor.execute import execute_command
from services.executor.plugins import (
    Action,
    ActionContext,
    ActionError,
    ActionLoadError,
    ActionRegistry,
    BaseAction,
    DuplicateActionError,
)
from services.executor.service import run_executor

__all__ = [
    "Action",
    "ActionContext",
    "ActionError",
    "ActionLoadError",
    "ActionRegistry",
    "BaseAction",
    "DuplicateActionError",
    "execute_command",
    "run_executor",
]
