"""A local three-node Kafka cluster: the dev broker's jars as three combined controller+broker nodes.

It runs beside the single dev broker, on its own loopback ports and state directory
(``<state dir>/kafka-cluster/node-N``), configured the way a production cluster should be for
exactly-once: every topic replicated 3 by default with ``min.insync.replicas=2``, the transaction
state log and the offsets topic replicated 3 with min ISR 2, unclean leader election off. The
controller quorum is static (``controller.quorum.voters``), so the nodes are formatted without
``--standalone`` and with one shared cluster id. Nodes start together: none answers before a
majority of the controllers has elected a leader.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.devinfra import paths
from services.devinfra.kafka_local import LauncherError, LocalKafka, Progress, storage_properties
from services.devinfra.process import wait_until

NODES = 3
DEFAULT_BASE_PORT = 29292  # node N: client port base + 2(N-1), controller port one above it
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2


def default_home() -> Path:
    return paths.state_dir() / "kafka-cluster"


@dataclass(frozen=True)
class ClusterNode(LocalKafka):
    node_id: int = 1
    voters: str = ""
    shared_id: str = ""
    state: Path = Path()

    @property
    def home(self) -> Path:
        return self.state

    def quorum_arguments(self) -> list[str]:
        return []  # static quorum: the voters are in server.properties

    def cluster_id(self) -> str:
        return self.shared_id

    def jvm_options(self, tool: bool = False) -> list[str]:
        # Three JVMs on a small machine: quick start and a small heap (as the secured broker).
        quick = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto"]
        return quick if tool else [*quick, "-Xms128m", "-Xmx384m"]

    def server_properties(self, data: Path) -> str:
        return f"""# Written by `switchyard dev up --brokers 3`; regenerated at every start.
process.roles=broker,controller
node.id={self.node_id}
controller.quorum.voters={self.voters}
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
{storage_properties(data, REPLICATION_FACTOR, MIN_INSYNC_REPLICAS)}"""


@dataclass(frozen=True)
class LocalCluster:
    """Three nodes; client ports ``base``, ``base+2``, ``base+4`` (controllers one above each)."""

    base_port: int = DEFAULT_BASE_PORT
    home: Path = Path()

    @property
    def id_file(self) -> Path:
        return self.home / "cluster.json"

    def _cluster_id(self) -> str:
        # One id for the cluster's lifetime: a node formatted with another would refuse to join.
        try:
            return str(json.loads(self.id_file.read_text())["cluster_id"])
        except (OSError, ValueError, KeyError):
            import base64

            self.home.mkdir(parents=True, exist_ok=True)
            new = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self.id_file.write_text(json.dumps({"cluster_id": new}))
            return new

    @property
    def nodes(self) -> list[ClusterNode]:
        ports = [(self.base_port + 2 * i, self.base_port + 2 * i + 1) for i in range(NODES)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports))
        shared = self._cluster_id()
        return [
            ClusterNode(port, controller, i + 1, voters, shared, self.home / f"node-{i + 1}")
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def running(self) -> list[bool]:
        return [node.running() for node in self.nodes]

    def brokers_seen(self, timeout_s: float = 2.0) -> int:
        """How many brokers the cluster's metadata lists (0 when no node answers)."""
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
            return len(admin.list_topics(timeout=timeout_s).brokers)
        except Exception:
            return 0

    def start(self, progress: Progress = print, timeout_s: float = 180) -> bool:
        """Start every node that is not running (together: a lone node waits for a quorum) and wait
        until the metadata lists all three brokers. Returns True if this call started any node."""
        nodes = [node for node in self.nodes if not node.running()]
        if nodes:
            progress(f"starting a {NODES}-node Kafka cluster on {self.bootstrap} (state: {self.home})")
            with ThreadPoolExecutor(len(nodes)) as pool:
                for future in [pool.submit(node.start, progress) for node in nodes]:
                    future.result()
        try:
            wait_until(
                lambda: self.brokers_seen() == NODES, timeout_s, f"{NODES} brokers on {self.bootstrap}"
            )
        except TimeoutError as exc:
            raise LauncherError(str(exc)) from exc
        return bool(nodes)

    def stop(self) -> list[int]:
        """Stop every running node; returns the ids of the nodes stopped."""
        nodes = [node for node in self.nodes if node.running()]
        with ThreadPoolExecutor(max(1, len(nodes))) as pool:
            stopped = list(pool.map(lambda node: node.stop(), nodes))
        return [node.node_id for node, done in zip(nodes, stopped, strict=True) if done]

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]


def local_cluster(base_port: int = DEFAULT_BASE_PORT, home: Path | None = None) -> LocalCluster:
    return LocalCluster(base_port, home or default_home())


def export_lines(cluster: LocalCluster) -> list[str]:
    """Shell lines pointing Switchyard at the cluster with its replication settings."""
    return [
        f"export KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap}",
        f"export SWITCHYARD_REPLICATION_FACTOR={REPLICATION_FACTOR}",
        f"export SWITCHYARD_MIN_INSYNC_REPLICAS={MIN_INSYNC_REPLICAS}",
    ]
