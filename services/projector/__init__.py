"""The projector: materialises the run-history topic (``<prefix>.events``) into PostgreSQL.

Modules: :mod:`.db` (URLs, engines, migrations), :mod:`.models` (tables), :mod:`.events`
(decoding a Kafka record into a :class:`~.events.ProjectedEvent`), :mod:`.changes` (what one
event changes, as pure data), :mod:`.writer` (one batch → one database transaction),
:mod:`.runner` (the Kafka consumer loop, :func:`~.runner.run_projector`), :mod:`.queries`
(the read side used by ``switchyard runs``) and :mod:`.metrics`.
"""
