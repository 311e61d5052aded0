"""Example Switchyard plugins: the ``example.greet`` action and the ``example.heartbeat`` trigger."""
