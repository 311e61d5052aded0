"""The vocabulary is complete: every error kind and event type the code writes is defined in it.

The scan reads the source of ``services/`` (no import, no I/O beyond reading files) and collects
string literals in the places an error kind is given — the kind argument of the exceptions and
helpers that carry one, ``error_kind`` keys, keywords and assignments, ``*_KIND`` constants and
what functions named ``*kind*`` return — and the ``type`` of every machine ``Event``.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import services
from services.contracts.vocabulary import (
    ERROR_KINDS,
    RUN_END_EVENTS,
    RUN_TERMINAL,
    STEP_TERMINAL,
    ErrorKind,
    EventType,
    RunStatus,
    StepStatus,
)

SOURCE = Path(services.__file__).parent
#: Calls whose string arguments include an error kind (messages have spaces: they never match).
KIND_CALLS = frozenset(
    {
        "_Failure",
        "_failed",
        "_fail",
        "_failed_attempt",
        "fail_run",
        "_fail_run",
        "ActionError",
        "ContractError",
        "StrictJSONError",
        "TriggerError",
        "StepRejected",
        "StepFailure",
        "_dead",
        "_dead_message",
        "_dead_letter",
        "encode_dead_letter",
        "poison",
    }
)
WORD = re.compile(r"^[a-z][a-z0-9_]*$")
#: ``error_kind`` also names a column: these literals are merge rules and column types, not kinds.
NOT_KINDS = frozenset({"set", "coalesce", "greatest", "text"})


def _literal(node: ast.AST | None) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and WORD.match(node.value):
        yield node.value
    elif isinstance(node, ast.BoolOp):  # ``given or "default"``
        for value in node.values:
            yield from _literal(value)
    elif isinstance(node, ast.IfExp):
        yield from _literal(node.body)
        yield from _literal(node.orelse)


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _kinds_in(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "error_kind":
                    yield from ((k, node.lineno) for k in _literal(kw.value))
            if _callee(node) in KIND_CALLS:
                for arg in node.args:
                    yield from ((k, node.lineno) for k in _literal(arg))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "error_kind":
                    yield from ((k, node.lineno) for k in _literal(value))
        elif isinstance(node, ast.Assign):
            if any(
                isinstance(t, ast.Name) and (t.id == "error_kind" or t.id.endswith("_KIND"))
                for t in node.targets
            ):
                yield from ((k, node.lineno) for k in _literal(node.value))
        elif isinstance(node, ast.FunctionDef) and "kind" in node.name:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return):
                    yield from ((k, inner.lineno) for k in _literal(inner.value))


def _event_types_in(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == "Event" and node.args:
            yield from ((k, node.lineno) for k in _literal(node.args[0]))


@functools.cache
def _trees() -> tuple[tuple[Path, ast.Module], ...]:
    """Every module of ``services/``, parsed once for all the scans."""
    return tuple((p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(SOURCE.rglob("*.py")))


def _scan(found: type[ErrorKind] | type[EventType], collect: object) -> list[str]:
    assert callable(collect)
    missing = []
    for path, tree in _trees():
        for value, line in collect(tree):
            if value not in NOT_KINDS and value not in found.__members__.values():
                missing.append(f"{path.relative_to(SOURCE.parent)}:{line}: {value!r}")
    return missing


def test_every_error_kind_the_code_writes_is_in_the_vocabulary() -> None:
    assert _scan(ErrorKind, _kinds_in) == []


def test_every_event_type_the_machine_writes_is_in_the_vocabulary() -> None:
    assert _scan(EventType, _event_types_in) == []


def test_the_scan_finds_literal_kinds() -> None:
    """The scan is not vacuous: a literal kind in any of the places it reads is reported."""
    source = """
raise _Failure("made_up_a", "a message", True)
letter = {"error_kind": "made_up_b", "error_message": "x y"}
error_kind = given or "made_up_c"
def error_kind(exc): return "made_up_d"
record(error_kind="made_up_e")
"""
    assert sorted(k for k, _ in _kinds_in(ast.parse(source))) == [f"made_up_{c}" for c in "abcde"]
    assert [k for k, _ in _event_types_in(ast.parse('Event("made_up", "s")'))] == ["made_up"]


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_has_a_flag_and_a_one_line_meaning(kind: ErrorKind) -> None:
    assert isinstance(kind.retryable, bool)
    assert kind.meaning and "\n" not in kind.meaning and len(kind.meaning) <= 100
    assert kind.scope in ("step", "record", "action")
    assert re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", kind.value)  # a retry policy can name it


def test_the_table_covers_exactly_the_kinds() -> None:
    assert set(ERROR_KINDS) == set(ErrorKind)


def test_dead_letter_kinds_are_not_retryable() -> None:
    assert [k for k in ErrorKind if k.scope == "record" and k.retryable] == []


def test_terminal_states_and_run_end_events_agree() -> None:
    assert {s for s in RunStatus if s.terminal} == RUN_TERMINAL
    assert {s for s in StepStatus if s.terminal} == STEP_TERMINAL
    assert {f"run_{s}" for s in RUN_TERMINAL} == RUN_END_EVENTS
    assert not RunStatus.PENDING.terminal and StepStatus.SKIPPED.terminal


def test_the_executor_reports_each_kind_with_its_vocabulary_flag() -> None:
    """``_Failure(ErrorKind.X, message, retryable)`` in the executor says X's own flag."""
    tree = ast.parse((SOURCE / "executor" / "execute.py").read_text(encoding="utf-8"))
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == "_Failure" and len(node.args) == 3:
            kind, flag = node.args[0], node.args[2]
            if isinstance(kind, ast.Attribute) and isinstance(flag, ast.Constant):
                seen[(kind.attr, node.lineno)] = flag.value
    assert len(seen) >= 10
    assert {key: flag for key, flag in seen.items() if ErrorKind[key[0]].retryable != flag} == {}
