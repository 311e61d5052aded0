"""A dead letter is always producible: every string field bounded and encodable, whatever it is
handed, and the whole record within the budget it is given."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.contracts import serde
from services.contracts.dead_letters import (
    MAX_FIELD,
    MAX_MESSAGE,
    RESERVED_BYTES,
    bounded_identity,
    dead_letter_id,
    encode_dead_letter,
)
from services.contracts.text import bounded_text, utf8_safe


def decode(record: bytes) -> dict[str, object]:
    return serde.decode(record, expected="DeadLetter")[1]


def test_a_300000_character_tenant_makes_a_small_dead_letter_that_says_so() -> None:
    record = encode_dead_letter("router.intake", "invalid_field", "refused", 1, tenant="t" * 300_000)
    body = decode(record)
    assert len(str(body["tenant"])) == MAX_FIELD and str(body["tenant"]).endswith("…")
    assert "tenant cut from 300000 characters" in str(body["error_message"])
    assert len(record) < 2_000


def test_lone_surrogates_in_any_string_become_visible_escapes() -> None:
    body = decode(
        encode_dead_letter(
            "svc\ud800",
            "kind\udfff",
            "message \ud800",
            1,
            topic="t\ud800",
            partition=0,
            offset=1,
            key="k\ud800",
            tenant="a\ud800",
            correlation_id="c\ud800",
            run_id="r\ud800",
            step_id="s\ud800",
        )
    )
    assert body["tenant"] == "a\\ud800" and body["error_message"] == "message \\ud800"
    assert body["original_key"] == "k\ud800".encode("utf-8", "surrogatepass")


def test_a_huge_run_id_gives_a_hashed_deterministic_id() -> None:
    first = dead_letter_id("router.core", run_id="r" * 100_000, step_id="s", attempt=1)
    again = dead_letter_id("router.core", run_id="r" * 100_000, step_id="s", attempt=1)
    other = dead_letter_id("router.core", run_id="r" * 99_999, step_id="s", attempt=1)
    assert first == again != other
    assert first.startswith("router.core:sha256:") and len(first) < 100


def test_the_copy_of_the_original_shrinks_to_fit_a_small_budget() -> None:
    budget = RESERVED_BYTES + 10_000
    record = encode_dead_letter(
        "svc", "oversized", "m", 1, value=b"v" * 900_000, key=b"k" * 900_000, max_bytes=budget
    )
    body = decode(record)
    assert len(body["original_value"] or b"") == 10_000  # type: ignore[arg-type]
    assert len(record) <= budget
    tiny = encode_dead_letter("svc", "oversized", "m", 1, value=b"v" * 100, max_bytes=1000)
    assert decode(tiny)["original_value"] == b""


def test_the_message_keeps_its_notes_when_it_is_cut() -> None:
    body = decode(encode_dead_letter("svc", "k", "m" * 10_000, 1, value=b"v" * 600_000))
    message = str(body["error_message"])
    assert len(message) <= MAX_MESSAGE and message.endswith("to 524288 bytes)")


def test_bounded_identity_and_text_helpers() -> None:
    assert bounded_identity("t" * 1000, None, "c\ud800") == ("t" * (MAX_FIELD - 1) + "…", None, "c\\ud800")
    assert bounded_text("abc", 3) == "abc" and bounded_text("abcd", 3) == "ab…"
    assert utf8_safe("ok") == "ok"


strings = st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=50).map("".join)
huge = st.sampled_from(["x" * 300_000, "é" * 100_000, "\ud800" * 50_000])


@settings(max_examples=100, deadline=None)
@given(
    st.tuples(strings | huge, strings | huge, strings | huge, strings | huge, strings | huge, strings | huge),
    st.none() | st.binary(max_size=20) | st.just(b"b" * 2_000_000),
    st.none() | st.integers(min_value=0, max_value=2_000_000),
)
def test_any_strings_make_an_encodable_dead_letter_within_its_budget(
    texts: tuple[str, ...], value: bytes | None, max_bytes: int | None
) -> None:
    service, kind, message, tenant, run_id, topic = texts
    record = encode_dead_letter(
        service,
        kind,
        message,
        0,
        topic=topic,
        partition=0,
        offset=0,
        key=message,
        value=value,
        tenant=tenant,
        correlation_id=run_id,
        run_id=run_id,
        step_id=kind,
        max_bytes=max_bytes,
    )
    body = decode(record)
    assert len(str(body["error_message"])) <= MAX_MESSAGE
    assert (
        len(record)
        <= (max_bytes if max_bytes is not None and max_bytes > RESERVED_BYTES else RESERVED_BYTES)
        + 512 * 1024
    )
    assert len(record) < 600_000
