"""Root pytest configuration: the shared fixture modules, and how the suite is split and scheduled.

Three markers decide where a test runs (the Makefile's targets, README "Tests"):

- ``slow`` — the fault suite (``tests/faults``) and the benchmark smoke: ``make test-slow``.
  Given here by path, so a new fault scenario is slow without remembering a marker.
- ``serial`` — tests that assert wall-clock bounds (latency ratios, "within N s"): ``make test``
  runs them after the parallel part, alone, so other workers' load cannot fail them.
- ``xdist_group`` — ``make test`` runs the rest on pytest-xdist workers with ``--dist
  loadgroup``. A test using a session-scoped fixture of its own directory (the secured broker,
  the three-node cluster, the built wheel) is grouped by that fixture, and one using a module- or
  class-scoped fixture by its module, so each such service is started once, on one worker; every
  other test is scheduled on its own (the shared broker and database from ``tests/fixtures``
  exist once per worker and are cheap to reach).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from services.config import Settings

pytest_plugins = [
    "tests.fixtures.infra",
    "tests.fixtures.database",
    "tests.fixtures.kafka",
    "tests.fixtures.engine",
]

ROOT = Path(__file__).resolve().parent.parent
SLOW_PATHS = ("tests/faults/", "tests/integration/test_benchmarks_smoke.py")
# Session fixtures every worker may hold: the connection to the shared broker and database.
SHARED_FIXTURE_MODULES = "tests.fixtures."


def is_slow(relative_path: str) -> bool:
    return relative_path.startswith(SLOW_PATHS)


def xdist_group(item: pytest.Item) -> str | None:
    """The group that keeps ``item`` on the worker holding its shared fixture, if it has one."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    session_scoped: list[str] = []  # the modules (conftests) defining the session fixtures used
    module_scoped = False
    for definitions in info.name2fixturedefs.values():
        definition: Any = definitions[-1]
        module = getattr(definition.func, "__module__", "")
        if not module.startswith("tests.") or module.startswith(SHARED_FIXTURE_MODULES):
            continue  # pytest's and plugins' own fixtures, and the shared broker and database
        if definition.scope == "session":
            session_scoped.append(module)
        elif definition.scope in ("package", "module", "class"):
            module_scoped = True
    if session_scoped:
        return f"session-{min(session_scoped)}"
    if module_scoped:
        return f"module-{item.nodeid.split('::')[0]}"
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            relative = item.path.resolve().relative_to(ROOT).as_posix()
        except ValueError:  # a test file outside the repository (e.g. pytest's own tmp tests)
            continue
        if is_slow(relative):
            item.add_marker(pytest.mark.slow)
        group = xdist_group(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):
        # xdist hands out work in collection order: a group (a minute or more on one worker: a
        # broker or a cluster to start) handed out last would finish alone after everything else.
        items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


@pytest.hookimpl(trylast=True)  # after xdist's own hook, which tags a grouped test's id with its group
def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker with ``--dist loadgroup``: stop at once if xdist could not tag the grouped
    tests' ids (``<id>@<group>``), as with pytest 9 and xdist 3.8 — the groups would be ignored
    without a word, and every module-scoped engine, secured broker or cluster started on every
    worker (the suite took a third longer so, unnoticed, until 2026-11-30)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    untagged = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid
    ]
    if untagged:
        raise pytest.UsageError(
            f"pytest-xdist did not tag {len(untagged)} grouped test(s) with their group (e.g. "
            f"{untagged[0]}): --dist loadgroup would ignore the groups with pytest "
            f"{pytest.__version__}; install the pytest version pyproject.toml pins"
        )


def utf8_safe(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings escaped (``\\ud800``), recursively."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(utf8_safe(v) for v in value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(config: pytest.Config, report: Any) -> Any:
    """A worker's report, sendable: tests of hostile text log lone surrogates, which xdist's
    channel (UTF-8 only) refuses with an internal error that ends the whole run."""
    data = yield
    return utf8_safe(data)


@pytest.hookimpl(optionalhook=True)  # an xdist hook, run by the controller for each worker
def pytest_configure_node(node: Any) -> None:
    node.workerinput["controller_columns"] = os.environ.get("COLUMNS")
    # The broker and database the run was started with (tests/fixtures/infra.py).
    try:
        settings = Settings()
    except ValueError:  # invalid settings: the tests that read them say so themselves
        return
    node.workerinput["controller_infra"] = [settings.kafka_bootstrap_servers, settings.database_url]


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker: Hypothesis without its timing checks, and ``COLUMNS`` as the
    controller's (workers start with ``COLUMNS=80``, which rich consoles made at import keep, so
    CLI messages would wrap where a serial run's do not)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    # Hypothesis's timing checks (per-example deadline, slow generation) fail on a core shared
    # with other workers; the examples and properties checked stay the same.
    hypothesis.settings.register_profile(
        "xdist-worker", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
    )
    hypothesis.settings.load_profile("xdist-worker")
    columns = workerinput.get("controller_columns")
    if columns is None:
        os.environ.pop("COLUMNS", None)
    else:
        os.environ["COLUMNS"] = columns
