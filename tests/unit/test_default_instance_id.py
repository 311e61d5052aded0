"""One instance id rule for every process: ``SWITCHYARD_INSTANCE_ID``, else hostname-pid."""

from __future__ import annotations

import os
import socket

from services.config import Settings, default_instance_id


def test_the_setting_wins() -> None:
    assert default_instance_id(Settings(instance_id="router-a")) == "router-a"


def test_without_it_hostname_and_pid() -> None:
    assert default_instance_id(Settings(instance_id=None)) == f"{socket.gethostname()}-{os.getpid()}"
