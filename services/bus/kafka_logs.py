"""Where librdkafka's own log lines go: the Python logger ``switchyard.kafka``, never raw stderr.

Without a ``logger`` in its configuration, librdkafka writes ``%6|<ts>|BGQUEUE|…`` lines straight
to stderr, past the log format and level of :func:`services.runtime.setup_logging`. With one,
confluent-kafka hands each line to that logger when the client is polled (``poll``, ``flush``,
``consume``), at the matching level (librdkafka's info and notice are INFO, debug DEBUG), so
they are filtered, formatted and shipped like every other log line.
"""

from __future__ import annotations

import logging

KAFKA_LOG = logging.getLogger("switchyard.kafka")
