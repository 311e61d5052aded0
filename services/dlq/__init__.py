"""Dead letters for operators: list, inspect and re-drive them (``switchyard dlq``).

:mod:`.eligibility` decides which dead letters may be sent again (pure), :mod:`.filters` parses
the selection options (pure), :mod:`.queries` reads ``dead_letters`` with their re-drives,
:mod:`.redrive` sends and audits.
"""
