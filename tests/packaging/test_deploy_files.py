"""The container recipe, checked without a Docker engine: the Dockerfile installs the built wheel
(copying nothing the wheel holds), and compose gives the engine services a data volume and health
checks on the endpoints the engine serves."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ENGINE = ("router", "executor", "projector")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    joined = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None))
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.kafka.yml").read_text())
    return loaded


def test_dockerfile_installs_the_wheel_and_copies_nothing_it_holds() -> None:
    stages = dockerfile_stages((REPO / "deploy" / "Dockerfile").read_text())
    assert len(stages) >= 2, "a wheel-building stage, then the runtime stage"
    *builders, final = stages
    (wheel_stage,) = [s for s in builders if any("pip wheel" in r for r in s.args("RUN"))]
    for copy in wheel_stage.args("COPY"):
        *sources, _target = shlex.split(copy)
        for source in sources:
            assert (REPO / source).exists(), (
                f"the wheel stage copies {source}, which is not in the repository"
            )
    # the runtime stage takes nothing from the build context: the wheel holds code, schemas, examples
    assert final.args("ADD") == []
    for copy in final.args("COPY"):
        assert copy.startswith("--from="), f"runtime stage copies from the source tree: COPY {copy}"
    installs = [r for r in final.args("RUN") if "pip install" in r]
    assert installs and all(re.search(r"\S+\.whl\b", r) for r in installs), installs
    assert any(f"from={wheel_stage.name}" in r for r in installs), "install the wheel the first stage built"
    assert not any(re.search(r"pip install [^&]*\s\.(\s|$)", r) for r in final.args("RUN"))
    (workdir,) = final.args("WORKDIR")
    assert any(workdir in v for v in final.args("VOLUME")), "keys and definitions live in a volume"
    assert final.args("ENTRYPOINT") == ['["switchyard"]']


def test_compose_engine_services_have_health_checks_and_the_data_volume() -> None:
    compose = _compose()
    services = compose["services"]
    final = dockerfile_stages((REPO / "deploy" / "Dockerfile").read_text())[-1]
    (workdir,) = final.args("WORKDIR")
    declared_volumes = set(compose.get("volumes") or {})
    for name in ENGINE:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        port = int(service["environment"]["SWITCHYARD_METRICS_PORT"])
        assert port > 0, f"{name}: /healthz and /readyz are served only with a metrics port"
        check = service["healthcheck"]
        assert not check.get("disable")
        test = " ".join(check["test"])
        assert re.search(rf"127\.0\.0\.1:{port}/(readyz|healthz)", test), test
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        mounts = {m.split(":")[0]: m.split(":")[1] for m in service["volumes"]}
        named = {source: target for source, target in mounts.items() if source in declared_volumes}
        assert workdir in named.values(), f"{name}: no named volume at {workdir}: {service['volumes']}"
        for dependency, condition in service["depends_on"].items():
            assert dependency in services
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency] and not services[dependency]["healthcheck"].get(
                    "disable"
                )
    for infra in ("kafka", "postgres"):
        assert services[infra]["healthcheck"]["test"], infra


def test_every_service_depended_on_as_healthy_has_a_health_check() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            continue
        for dependency, condition in depends.items():
            if condition.get("condition") == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{name} waits on {dependency}"
