"""The operator console: a versioned JSON API (``/v1``) and a server-rendered web UI over the run
history in PostgreSQL, acting only by producing control commands and tenant triggers to Kafka."""
