"""How fast a consumer group hands a killed member's partitions on, per group protocol (issue 17).

Not a test: a measurement of the group coordinator alone, without the engine (the fault suite's
recovery figures add process start-up, restore and the first transaction). On a broker of your
choice, a 4-partition topic and two members in separate processes, per protocol and round:

- ``restart_same_id``: member ``a`` is SIGKILLed and a replacement with the same instance id
  (imported beforehand: Python start-up does not count) subscribes at once; time until ``a``'s
  partitions are owned again;
- ``no_restart_survivor``: the member owning partitions is SIGKILLed and nothing replaces it;
  time until the survivor owns them;
- ``graceful_stop``: SIGTERM, ``close()``; time until the survivor owns its partitions.

    python tests/faults/group_recovery.py 127.0.0.1:29092 consumer,static,classic 3

``consumer`` is KIP-848 (its session timeout is the broker's), ``classic`` today's dynamic
members (session 10 s), ``static`` classic with ``group.instance.id``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


def member(bootstrap: str, group: str, topic: str, mode: str, instance: str) -> None:
    """One group member: prints its owned partitions on every change until SIGTERM."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "log_level": 0,
    }
    if mode == "consumer":
        conf["group.protocol"] = "consumer"
    else:
        conf.update({"partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 10_000})
        conf.update({"heartbeat.interval.ms": 1_000})
        if mode == "static":
            conf["group.instance.id"] = instance
    sys.stdin.readline()  # imported: wait for "go"
    consumer = Consumer(conf)
    owned: set[int] = set()

    def changed(gained: list[TopicPartition], lost: list[TopicPartition]) -> None:
        owned.update(p.partition for p in gained)
        owned.difference_update(p.partition for p in lost)
        print(json.dumps({"owned": sorted(owned)}), flush=True)

    consumer.subscribe(
        [topic],
        on_assign=lambda _c, ps: changed(ps, []),
        on_revoke=lambda _c, ps: changed([], ps),
        on_lost=lambda _c, ps: changed([], ps),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        consumer.poll(0.1)
    consumer.close()


class Member:
    def __init__(self, bootstrap: str, group: str, topic: str, mode: str, instance: str) -> None:
        self.group = group
        args = [sys.executable, __file__, "member", bootstrap, group, topic, mode, instance]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.owned: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.owned = set(json.loads(line)["owned"])

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def wait(check: Callable[[], bool], timeout_s: float = 90) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def elapsed(since: float, check: Callable[[], bool]) -> float | None:
    return round(time.time() - since, 2) if wait(check) else None


def pair(bootstrap: str, topic: str, mode: str) -> tuple[Member, Member]:
    group = f"recovery-{mode}-{uuid.uuid4().hex[:8]}"
    a, b = (Member(bootstrap, group, topic, mode, name) for name in "ab")
    a.go()
    b.go()
    assert wait(lambda: bool(a.owned and b.owned and len(a.owned | b.owned) == 4)), "no initial assignment"
    time.sleep(3)  # a few heartbeats of steady state
    return a, b


def measure(bootstrap: str, topic: str, mode: str) -> dict[str, float | None]:
    a, b = pair(bootstrap, topic, mode)
    replacement = Member(bootstrap, a.group, topic, mode, "a")
    time.sleep(2)  # its imports are done
    lost, killed = set(a.owned), time.time()
    a.kill()
    replacement.go()
    restart = elapsed(killed, lambda: lost <= (replacement.owned | b.owned))
    time.sleep(3)
    victim, survivor = (replacement, b) if replacement.owned else (b, replacement)
    lost, killed = set(victim.owned), time.time()
    victim.kill()
    no_restart = elapsed(killed, lambda: lost <= survivor.owned)
    survivor.kill()
    a, b = pair(bootstrap, topic, mode)
    lost, stopped = set(a.owned), time.time()
    a.proc.send_signal(signal.SIGTERM)
    graceful = elapsed(stopped, lambda: lost <= b.owned)
    b.kill()
    a.proc.wait()
    return {"restart_same_id": restart, "no_restart_survivor": no_restart, "graceful_stop": graceful}


def main(bootstrap: str, modes: str, rounds: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"recovery-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
    try:
        for mode in modes.split(","):
            results = [measure(bootstrap, topic, mode) for _ in range(rounds)]
            print(mode, {key: [r[key] for r in results] for key in results[0]}, flush=True)
    finally:
        admin.delete_topics([topic])[topic].result()


if __name__ == "__main__":
    if sys.argv[1] == "member":
        member(*sys.argv[2:7])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
