"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) run from the official jars.

The jars are resolved once from Maven Central with ``deploy/kafka/pom.xml`` and cached under the
user's cache dir; data and the log file live under the user's state dir. The broker is configured
so that transactions work on one node (replication factor 1, min ISR 1).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.devinfra import paths
from services.devinfra.process import pid_alive, stop_pid, tail, wait_until

KAFKA_VERSION = "4.1.1"

Progress = Callable[[str], object]


class LauncherError(RuntimeError):
    """Something the launcher cannot fix by itself; the message says what the user should do."""


@dataclass(frozen=True)
class LocalKafka:
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return paths.state_dir() / "kafka"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return pid_alive(self.pid())

    # Hooks for a differently configured broker from the same jars (services/devinfra/kafka_secure.py).
    def server_properties(self, data: Path) -> str:
        return _server_properties(self, data)

    def format_arguments(self) -> list[str]:
        """Extra arguments of the one-time storage format (e.g. bootstrap SCRAM credentials)."""
        return []

    def quorum_arguments(self) -> list[str]:
        """How the storage format learns the controller quorum: this node alone, by default."""
        return ["--standalone"]

    def cluster_id(self) -> str:
        """The KRaft cluster id given to the storage format (every node of a cluster shares one)."""
        return _cluster_id()

    def answers(self) -> bool:
        return broker_answers(self.bootstrap)

    def partitions_on_disk(self) -> int:
        """Partition directories in the data directory: a broker loads each one before it answers."""
        try:
            return sum(1 for entry in os.scandir(self.home / "data") if entry.is_dir())
        except OSError:
            return 0

    def ready_timeout_s(self) -> float:
        # A broker reopens every partition it holds before it answers (measured here: ~5 min for
        # 17,600 partitions left by many test runs), so a fixed wait fails on a well-used machine.
        return READY_TIMEOUT_S + READY_S_PER_PARTITION * self.partitions_on_disk()

    def data_hint(self) -> str:
        partitions = self.partitions_on_disk()
        if partitions <= LARGE_DATA_PARTITIONS:
            return ""
        return (
            f" (its data directory {self.home / 'data'} holds {partitions} partitions; to start "
            "empty: `switchyard dev down --wipe`, then `switchyard dev up`)"
        )

    def jvm_options(self, tool: bool = False) -> list[str]:
        """Heap and GC of the broker's JVM (``tool``: of the one-time storage format's)."""
        return [] if tool else ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC"]

    def start(self, progress: Progress = print) -> bool:
        """Start the broker unless ours is already running. Returns True if this call started it."""
        if self.running():
            try:
                wait_until(self.answers, self.ready_timeout_s(), f"Kafka at {self.bootstrap}")
            except TimeoutError as exc:
                raise LauncherError(f"{exc}{self.data_hint()}") from exc
            return False
        if taken := [port for port in (self.port, self.controller_port) if port_taken(port)]:
            return self._wait_for_the_broker_on(taken)
        java, libs = _require_tools(), ensure_jars(progress)
        self.home.mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        props = self.home / "server.properties"
        props.write_text(self.server_properties(data))
        if not (data / "meta.properties").exists():
            progress(f"formatting Kafka storage in {data}")
            subprocess.run(
                [
                    java,
                    *self.jvm_options(tool=True),
                    "-cp",
                    f"{libs}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    *self.quorum_arguments(),
                    "-t",
                    self.cluster_id(),
                    "-c",
                    str(props),
                    *self.format_arguments(),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        progress(f"starting Kafka {KAFKA_VERSION} on {self.bootstrap} (log: {self.log_file})")
        if (partitions := self.partitions_on_disk()) > LARGE_DATA_PARTITIONS:
            progress(f"  loading {partitions} partitions kept from earlier runs{self.data_hint()}")
        log4j = paths.deploy_file("kafka", "log4j2.properties")
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [
                    java,
                    *self.jvm_options(),
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={log4j}",
                    "-cp",
                    f"{libs}/*",
                    "kafka.Kafka",
                    str(props),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        try:
            wait_until(
                lambda: proc.poll() is not None or self.answers(),
                timeout_s=self.ready_timeout_s(),
                what=f"Kafka on {self.bootstrap}",
            )
        except TimeoutError as exc:
            raise LauncherError(f"{exc}{self.data_hint()}; last log lines:\n{tail(self.log_file)}") from exc
        if proc.poll() is not None:
            raise LauncherError(
                f"Kafka exited with code {proc.returncode}; "
                f"last lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return True

    def _wait_for_the_broker_on(self, ports: list[int]) -> bool:
        """A process we have no pid file for holds our ports: a broker still starting, or one
        started from another state directory, is used as it is (a second one would die on its
        ports); anything else is a clear error. Returns False: this call started nothing."""
        try:
            wait_until(self.answers, self.ready_timeout_s(), f"Kafka at {self.bootstrap}")
        except TimeoutError:
            raise LauncherError(
                f"port(s) {', '.join(map(str, ports))} on 127.0.0.1 are taken by a process that does not "
                f"answer as a Kafka broker at {self.bootstrap}: stop it, or give the local broker other "
                "ports (SWITCHYARD_DEV_KAFKA_PORT, SWITCHYARD_DEV_KAFKA_CONTROLLER_PORT)"
            ) from None
        return False

    def stop(self) -> bool:
        pid = self.pid()
        if not pid_alive(pid):
            return False
        assert pid is not None
        stop_pid(pid, timeout_s=60)
        self.pid_file.unlink(missing_ok=True)
        return True


def _require_tools() -> str:
    java = shutil.which("java")
    if java is None:
        raise LauncherError(
            "Java 17+ is needed to run the local Kafka broker. Install it with "
            "`apt-get install -y openjdk-17-jre-headless` (Debian/Ubuntu), or set KAFKA_BOOTSTRAP_SERVERS."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    major = _java_major(out)
    if major is not None and major < 17:
        raise LauncherError(f"Kafka 4 needs Java 17 or newer; found Java {major} at {java}.")
    return java


def _java_major(version_output: str) -> int | None:
    for token in version_output.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and "." in token:
            return int(head) if head != "1" else int(token.split(".")[1])
    return None


def jars_dir() -> Path:
    return paths.cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(progress: Progress = print) -> Path:
    """Resolve the broker's jars into the cache once (atomic rename, so an interrupted download retries)."""
    target = jars_dir()
    if target.is_dir() and any(target.glob("kafka_2.13-*.jar")):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LauncherError(
            "Maven is needed once to fetch the Kafka jars. Install it with `apt-get install -y maven`, "
            "or set KAFKA_BOOTSTRAP_SERVERS to an existing broker."
        )
    progress(f"resolving Apache Kafka {KAFKA_VERSION} jars with Maven (once; cached in {target})")
    tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=paths.cache_dir()))
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(paths.deploy_file("kafka", "pom.xml")),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={KAFKA_VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LauncherError(
            f"Maven could not resolve the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _cluster_id() -> str:
    # KRaft wants a base64 UUID; derive one without starting a JVM.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


READY_TIMEOUT_S = 120.0
READY_S_PER_PARTITION = 0.03
LARGE_DATA_PARTITIONS = 2_000


# The KIP-848 consumer group protocol (``SWITCHYARD_GROUP_PROTOCOL=consumer``) takes its session
# timeout and heartbeat interval from the broker, not the client. Kafka's defaults (45 s, 5 s) would
# leave a killed process's partitions idle for 45 s; at 2 s / 0.5 s a dead member is expelled 2 s
# after its last heartbeat and survivors learn their new partitions within one more heartbeat.
CONSUMER_GROUP_PROPERTIES = """group.consumer.session.timeout.ms=2000
group.consumer.min.session.timeout.ms=1000
group.consumer.heartbeat.interval.ms=500
group.consumer.min.heartbeat.interval.ms=250
"""


def storage_properties(data: Path, replication: int = 1, min_insync: int = 1) -> str:
    """The storage and internal-topic lines of a dev node's ``server.properties``, shared by the
    single, secured and three-node brokers (only their listeners and node ids differ)."""
    replicated = (
        f"default.replication.factor={replication}\nmin.insync.replicas={min_insync}\n"
        "unclean.leader.election.enable=false\n"
        if replication > 1
        else ""
    )
    return f"""log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
{replicated}offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_insync}
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
{CONSUMER_GROUP_PROPERTIES}share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_insync}
log.retention.hours=168
"""


def _server_properties(kafka: LocalKafka, data: Path) -> str:
    return f"""# Written by `switchyard dev up`; regenerated at every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{kafka.controller_port}
listeners=PLAINTEXT://127.0.0.1:{kafka.port},CONTROLLER://127.0.0.1:{kafka.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{kafka.port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
{storage_properties(data)}"""


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` now."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        admin.list_topics(timeout=timeout_s)
        return True
    except Exception:
        return False


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    try:
        wait_until(lambda: broker_answers(bootstrap), timeout_s, f"Kafka at {bootstrap}")
    except TimeoutError as exc:
        raise LauncherError(str(exc)) from exc
