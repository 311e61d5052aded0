"""The built wheel is self-contained: installed outside the repository, it finds its schemas,
migrations, examples and console files, and runs the demo end to end against a real broker."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from services import package_data
from tests.packaging.wheel import REPO, InstalledWheel


def _listing(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_holds_the_repository_data_as_package_data(installed_wheel: InstalledWheel) -> None:
    names = _listing(installed_wheel.wheel)
    for top, parts in package_data.BUNDLED.items():
        source = REPO.joinpath(*parts)
        expected = {
            f"services/_data/{top}/{p.relative_to(source).as_posix()}"
            for p in source.rglob("*")
            if p.is_file()
        }
        assert expected, source
        assert expected <= names, sorted(expected - names)
    for directory, pattern in [
        ("services/console/templates", "*.html"),
        ("services/console/static", "*"),
        ("services/projector/migrations", "*.mako"),
        ("services/projector/migrations/versions", "*.py"),
    ]:
        expected = {p.relative_to(REPO).as_posix() for p in (REPO / directory).glob(pattern) if p.is_file()}
        assert expected, directory
        assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("tests/", "benchmarks/", "schemas/", "deploy/")) for n in names)


def test_installed_package_reads_its_data_from_the_install(
    installed_wheel: InstalledWheel, tmp_path: Path
) -> None:
    probe = (
        "import json, services\n"
        "from services import package_data\n"
        "from services.contracts.catalog import catalog\n"
        "from services.commands.demo import EXAMPLES\n"
        "from services.projector.db import alembic_config\n"
        "from alembic.script import ScriptDirectory\n"
        "print(json.dumps({'package': services.__file__, 'schemas': str(package_data.schemas_dir()),\n"
        "  'examples': str(EXAMPLES), 'schemas_known': sorted(catalog().current),\n"
        "  'head': ScriptDirectory.from_config(alembic_config()).get_current_head()}))\n"
    )
    result = subprocess.run(
        [str(installed_wheel.bin / "python"), "-c", probe],
        cwd=tmp_path,
        env=installed_wheel.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    venv = str(installed_wheel.venv)
    for key in ("package", "schemas", "examples"):
        assert found[key].startswith(venv), (key, found[key])
    assert found["schemas_known"] == sorted(p.stem for p in (REPO / "schemas" / "avro").glob("*.avsc"))
    assert found["head"] is not None


def test_setup_copies_what_package_data_looks_for() -> None:
    tree = ast.parse((REPO / "setup.py").read_text())
    (bundled,) = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BUNDLED" for t in node.targets)
    ]
    copied = ast.literal_eval(bundled)
    assert copied == package_data.BUNDLED


@pytest.mark.integration
def test_installed_wheel_runs_the_demo_outside_the_repository(
    installed_wheel: InstalledWheel, kafka_bootstrap: str, database_url: str, unique: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(installed_wheel.bin / "switchyard"), "demo", "--timeout", "90"],
        cwd=tmp_path,
        env=installed_wheel.env(
            KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
            DATABASE_URL=database_url,
            SWITCHYARD_TOPIC_PREFIX=f"pkg{unique}",
            XDG_STATE_HOME=str(tmp_path / "state"),  # the demo's signing key, not the user's
            COLUMNS="200",
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    triggers = json.loads((REPO / "deploy" / "examples" / "triggers.json").read_text())
    finished = re.search(r"(\d+)/(\d+) runs finished", output)
    assert finished, output
    assert finished.group(1) == finished.group(2) == str(len(triggers)), output
    assert output.count("succeeded") == len(triggers), output
    assert "No such file or directory" not in output
    # librdkafka's own log lines and asyncio's complaints stay out of the demo's output
    assert not re.search(r"%\d\|\d+\.\d+\|", output), output
    assert "Task was destroyed" not in output, output
