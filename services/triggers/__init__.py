"""Trigger plugins: sources that turn outside signals into tenants' trigger events.

- :mod:`.plugins` — the interface (``TriggerPlugin``, ``Emission``, ``Emitter``) and
  ``TriggerRegistry`` (built-ins + ``switchyard.triggers`` entry points);
- :mod:`.schedule` — the built-in cron trigger, one event per tick even across restarts;
- :mod:`.emitter` — ``KafkaEmitter``: Avro ``TriggerEvent`` records to the tenant's trigger topic;
- :mod:`.runner` — instance configuration (YAML) and ``run_triggers``.
"""

from services.triggers.plugins import (
    Emission,
    EmitError,
    Emitter,
    TriggerLoadError,
    TriggerPlugin,
    TriggerRegistry,
)

__all__ = ["Emission", "EmitError", "Emitter", "TriggerLoadError", "TriggerPlugin", "TriggerRegistry"]
