"""Operator control commands (cancel, replay, approval decisions): their life, and their pure logic.

A ``ControlCommand`` (``schemas/avro/ControlCommand.avsc``) goes, step by step, through:

1. **Made and signed** — :mod:`.commands` (``command``: a fresh id, issued now; ``ControlSender``:
   one producer to ``<p>.control``, keyed by run), :mod:`.signing` (Ed25519 over RFC 8785 JSON of
   the signed fields), :mod:`.keys` (which operator key signs). Callers, edges that only parse
   input and show outcomes: the CLI ``switchyard replay|cancel|approve`` (``services/commands/control.py``)
   and the console's buttons (``services/console/actions.py``, a gateway signing
   ``on_behalf_of`` its logged-in operator).
2. **Intake** (``services/router/intake.py``, ``IntakeProcessor._control``: decode, dead-letter,
   forward) asks :mod:`.plausibility` whether the fields can be what an operator sent (else
   ``invalid_field``) and :mod:`.acceptance` whether to forward it: tenant registered, a run named,
   not a bulk replay, and :mod:`.verify` accepts its signature, key and age (else
   ``control_refused``, the reason first). The forwarded command carries the verified identity as
   its requester and goes to the run's inbox partition.
3. **Core** (``services/router/core.py``, ``CoreProcessor._control``: the transaction and the
   partition state) follows :mod:`services.router.control`: find the run (memory, or read back
   from its history), admit the command id once per run within the window (:mod:`.command_log`),
   then refuse, cancel, decide an approval step or replay, as one step.
4. **The run's history** — the decision is the step's first event, ``control_accepted`` or
   ``control_refused`` with the reason (``services/router/machine.py``, ``control_event``), then the
   cancel or replay events; a command about no run of its tenant, or whose decision cannot be
   written, is dead-lettered ``control_refused`` with the bare command.
5. **The audit rows** — the projector (``services/projector/control.py``) turns both, history
   events and dead letters, into one ``control_commands`` row per command id; the CLI (``--wait``)
   and the console read the outcome there (``services/projector/queries.py``).

The CLI, the console and the projector stay where they are: they are edges (argument parsing,
HTTP, SQL) around this logic, and each belongs with its kind of edge. The router's two steps keep
only their I/O (decoding, dead letters, the transaction, partition state) in the router.
Everything in this package is pure but :class:`.commands.ControlSender` and :mod:`.keys` (files).
"""
