"""A secured local broker: the dev broker's jars with SASL/SCRAM-SHA-512 and the standard authorizer.

It runs beside the plaintext dev broker, on its own ports and state directory. Every client
authenticates with SCRAM-SHA-512 on the one client listener (which is also the inter-broker one);
the controller listener takes SASL/PLAIN from a single static user. Only the admin principal
(``switchyard.admin``, whose credential is written into the storage when it is formatted) and the
controller are super users; ``allow.everyone.if.no.acl.found=false``, so every other principal
can do exactly what its ACLs allow (services/tenancy/acl.py).

Passwords are generated once per state directory and kept in ``credentials.json`` (mode 0600)
beside the data, so `switchyard dev env --secure --role ROLE` can print them again.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.bus.topics import TENANT_ID
from services.devinfra import paths
from services.devinfra.kafka_local import LauncherError, LocalKafka, Progress, storage_properties
from services.devinfra.process import wait_until
from services.tenancy.acl import PRINCIPAL_PREFIX, SERVICE_ROLES

MECHANISM = "SCRAM-SHA-512"
ADMIN = f"{PRINCIPAL_PREFIX}admin"
CONTROLLER = f"{PRINCIPAL_PREFIX}controller"  # SASL/PLAIN on the controller listener only
SCRAM_ITERATIONS = 8192
DEFAULT_PORT = 29192
DEFAULT_CONTROLLER_PORT = 29193


def default_home() -> Path:
    return paths.state_dir() / "kafka-secure"


def service_user(role: str) -> str:
    return f"{PRINCIPAL_PREFIX}{role}"


def client_options(username: str) -> dict[str, Any]:
    """librdkafka properties (besides the password) of a client authenticating as ``username``."""
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": MECHANISM, "sasl.username": username}


def _jaas_quote(value: str) -> str:
    # Generated passwords are URL-safe base64; refuse anything that could break the JAAS line.
    if not value or any(c in value for c in '"\\;\n'):
        raise ValueError("a JAAS value may not contain quotes, backslashes, semicolons or newlines")
    return f'"{value}"'


@dataclass(frozen=True)
class SecureKafka(LocalKafka):
    state: Path = Path()

    @property
    def home(self) -> Path:
        return self.state

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    # -- credentials --------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """username -> password of every principal made so far (admin and controller included)."""
        try:
            raw = json.loads(self.credentials_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def _save_credentials(self, creds: dict[str, str]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.credentials_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(creds, handle, indent=2, sort_keys=True)
        tmp.replace(self.credentials_file)

    def _bootstrap_credentials(self) -> dict[str, str]:
        # server.properties holds the admin's and the controller's passwords: owner only.
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        creds = self.credentials()
        if ADMIN not in creds or CONTROLLER not in creds:
            # The admin credential lives in the formatted storage: new credentials, new storage.
            shutil.rmtree(self.home / "data", ignore_errors=True)
            creds = {ADMIN: secrets.token_urlsafe(24), CONTROLLER: secrets.token_urlsafe(24)}
            self._save_credentials(creds)
        return creds

    def password(self, username: str) -> str:
        try:
            return self.credentials()[username]
        except KeyError:
            raise LauncherError(
                f"no credential for {username} on the secured broker; create it with "
                f"`switchyard dev up --secure --tenant NAME` (tenants) or run `dev up --secure` first"
            ) from None

    def client_config(self, username: str = ADMIN) -> dict[str, Any]:
        """A complete librdkafka configuration for ``username`` (password included)."""
        return {
            "bootstrap.servers": self.bootstrap,
            **client_options(username),
            "sasl.password": self.password(username),
        }

    # -- broker -------------------------------------------------------------------------------

    def server_properties(self, data: Path) -> str:
        creds = self._bootstrap_credentials()
        admin, controller = _jaas_quote(creds[ADMIN]), _jaas_quote(creds[CONTROLLER])
        scram_jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password={admin};'
        )
        plain_jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{CONTROLLER}" password={controller} user_{CONTROLLER}={controller};'
        )
        return f"""# Written by `switchyard dev up --secure`; regenerated at every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}
listeners=CLIENT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=CLIENT://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=CLIENT
sasl.mechanism.inter.broker.protocol={MECHANISM}
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.sasl.enabled.mechanisms={MECHANISM}
listener.name.client.scram-sha-512.sasl.jaas.config={scram_jaas}
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain_jaas}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{ADMIN};User:{CONTROLLER}
allow.everyone.if.no.acl.found=false
{storage_properties(data)}"""

    def jvm_options(self, tool: bool = False) -> list[str]:
        # A test and development broker: quick start over peak throughput (C1 only, serial GC)
        # halves its start on a loaded 2-core machine (29-38 s -> 14-22 s).
        quick = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto"]
        return quick if tool else [*quick, "-Xms128m", "-Xmx512m"]

    def format_arguments(self) -> list[str]:
        password = self._bootstrap_credentials()[ADMIN]
        return ["--add-scram", f"{MECHANISM}=[name={ADMIN},password={password}]"]

    def answers(self) -> bool:
        return _answers(self.client_config(ADMIN)) if ADMIN in self.credentials() else False

    # -- principals ---------------------------------------------------------------------------

    def ensure_users(self, usernames: Iterable[str], timeout_s: float = 60) -> dict[str, str]:
        """Create a SCRAM credential for each of ``usernames`` that has none yet (as the admin);
        returns username -> password for them."""
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialAlteration,
            UserScramCredentialUpsertion,
        )

        creds = self.credentials()
        wanted = sorted(set(usernames))
        for name in wanted:
            if name in (ADMIN, CONTROLLER):
                raise ValueError(f"{name} is reserved")
            creds.setdefault(name, secrets.token_urlsafe(24))
        self._save_credentials(creds)
        admin = AdminClient({**self.client_config(ADMIN), "log_level": 0})
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(name, info, creds[name].encode(), secrets.token_bytes(16))
            for name in wanted
        ]
        if upserts:
            for future in admin.alter_user_scram_credentials(upserts, request_timeout=30).values():
                future.result(timeout=timeout_s)
            # Credentials reach the broker's cache through the metadata log: wait until each works.
            for name in wanted:
                config = self.client_config(name)
                wait_until(lambda c=config: _authenticates(c), timeout_s, f"SCRAM login of {name}")  # type: ignore[misc]
        return {name: creds[name] for name in wanted}

    def ensure_service_users(self) -> dict[str, str]:
        return self.ensure_users(service_user(role) for role in SERVICE_ROLES)


def _answers(config: dict[str, Any], timeout_s: float = 2.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({**config, "log_level": 0}).list_topics(timeout=timeout_s)
        return True
    except Exception:
        return False


def _authenticates(config: dict[str, Any]) -> bool:
    return _answers(config, timeout_s=3.0)


def secure_kafka(
    port: int = DEFAULT_PORT, controller_port: int = DEFAULT_CONTROLLER_PORT, home: Path | None = None
) -> SecureKafka:
    return SecureKafka(port, controller_port, home or default_home())


def start(kafka: SecureKafka, tenants: Iterable[str] = (), progress: Progress = print) -> dict[str, str]:
    """Start the secured broker (unless running) and make the principals of every service role and
    of ``tenants``; returns username -> password of all of them."""
    tenants = list(tenants)
    if bad := [t for t in tenants if not TENANT_ID.fullmatch(t)]:
        raise LauncherError(f"not valid tenant ids: {', '.join(bad)}")
    kafka.start(progress)
    users = [service_user(role) for role in SERVICE_ROLES] + tenants
    kafka.ensure_users(users)
    return {name: kafka.password(name) for name in users}


def username_for(role: str, tenant: str | None = None) -> str:
    """The SCRAM username of ``role`` ("admin", a service role, or "tenant" with ``tenant``)."""
    if role == "tenant":
        if not tenant or not TENANT_ID.fullmatch(tenant):
            raise LauncherError("--role tenant needs --tenant NAME (a valid tenant id)")
        return tenant
    if role != "admin" and role not in SERVICE_ROLES:
        raise LauncherError(f"unknown role {role!r}: admin, {', '.join(SERVICE_ROLES)} or tenant")
    return service_user(role)


def export_lines(kafka: SecureKafka, username: str) -> list[str]:
    """Shell lines pointing Switchyard's clients at the secured broker as ``username``."""
    return [
        f"export KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap}",
        f"export SWITCHYARD_KAFKA_OPTIONS={shlex.quote(json.dumps(client_options(username)))}",
        f"export SWITCHYARD_KAFKA_SASL_PASSWORD={shlex.quote(kafka.password(username))}",
    ]
