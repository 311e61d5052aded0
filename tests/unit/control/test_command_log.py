"""The core's command log: each command id is decided once per run; stale ids are refused."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.contracts.records import ControlCommand
from services.control import command_log
from services.router.state import RunState

WINDOW = 300_000
NOW = 1_800_000_000_000


def run() -> RunState:
    return RunState("r", "acme", "w", 1, 0, "c", "k", {"event": "go", "data": {}}, 0, 0)


def cmd(command_id: str, issued_at: int = NOW) -> ControlCommand:
    """A cancel of run ``r``: the log reads its id and issue time only."""
    return {
        "command_id": command_id,
        "kind": "cancel",
        "requester": "ops@acme",
        "tenant": "acme",
        "run_id": "r",
        "step_id": None,
        "reason": "test",
        "correlation_id": "c",
        "issued_at": issued_at,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
    }


def test_the_same_id_is_admitted_once() -> None:
    r = run()
    assert command_log.admit(r, cmd("a"), NOW, WINDOW) is None
    why = command_log.admit(r, cmd("a"), NOW + 1000, WINDOW)
    assert why is not None and why.startswith("duplicate_command: ")
    assert command_log.admit(r, cmd("b"), NOW + 1000, WINDOW) is None


def test_an_id_is_forgotten_only_once_it_is_stale() -> None:
    r = run()
    assert command_log.admit(r, cmd("a"), NOW, WINDOW) is None
    assert command_log.admit(r, cmd("z"), NOW + WINDOW + 1, WINDOW) is not None  # stale itself
    assert "a" not in r.commands  # pruned: past the window ...
    why = command_log.admit(r, cmd("a"), NOW + WINDOW + 1, WINDOW)
    assert why is not None and why.startswith("stale_command: ")  # ... so it can only be stale


def test_the_log_is_bounded_per_window() -> None:
    r = run()
    for i in range(command_log.MAX_COMMANDS):
        assert command_log.admit(r, cmd(f"c{i}"), NOW, WINDOW) is None
    why = command_log.admit(r, cmd("one-more"), NOW, WINDOW)
    assert why is not None and why.startswith("too_many_commands: ")
    assert len(r.commands) == command_log.MAX_COMMANDS


def test_the_log_survives_the_changelog() -> None:
    r = run()
    command_log.admit(r, cmd("a"), NOW, WINDOW)
    restored = RunState.from_json(r.to_json())
    assert command_log.admit(restored, cmd("a"), NOW + 1, WINDOW) is not None


def test_admit_never_mutates_the_previous_log_in_place() -> None:
    r = run()
    before = r.commands
    command_log.admit(r, cmd("a"), NOW, WINDOW)
    assert before == {} and r.commands == {"a": NOW}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(-2 * WINDOW, 2 * WINDOW),  # issued relative to the first clock reading
            st.integers(0, WINDOW // 2),  # clock advance before it arrives
        ),
        max_size=40,
    )
)
def test_no_command_id_is_ever_admitted_twice(sends: list[tuple[str, int, int]]) -> None:
    r, now = run(), NOW
    issued: dict[str, int] = {}
    admitted: list[str] = []
    for command_id, offset, advance in sends:
        now += advance
        at = issued.setdefault(command_id, NOW + offset)  # a re-send is the same signed command
        if command_log.admit(r, cmd(command_id, at), now, WINDOW) is None:
            admitted.append(command_id)
            assert abs(now - at) <= WINDOW
    assert len(admitted) == len(set(admitted))
