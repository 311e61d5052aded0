"""The router: intake (triggers and control → inbox) and core (the only writer of run state)."""
