"""Redaction of credentials in well-known places (console, projector, dead letters, executor)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from services.contracts.redaction import (
    MASK,
    URL_MASK,
    might_hold_credentials,
    redact,
    redact_text,
    redact_url,
)

SECRET = "s3cr3t-VALUE-xyz"


def test_authorization_like_fields_are_masked_at_any_depth() -> None:
    value = {
        "headers": {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "Accept": "json"},
        "nested": [{"password": SECRET, "client_secret": SECRET, "refresh_token": SECRET}],
        "auth": {"type": "basic"},  # a structure under a secret-like name keeps its shape
    }
    out = redact(value)
    assert SECRET not in json.dumps(out)
    assert out["headers"]["Accept"] == "json"
    assert out["headers"]["Authorization"] == MASK
    assert out["auth"] == {"type": "basic"}


def test_url_userinfo_and_key_like_query_values_are_masked() -> None:
    url = f"https://bob:{SECRET}@api.example.test/v1/items?api_key={SECRET}&page=2&sig={SECRET}"
    out = redact_url(url)
    assert SECRET not in out
    assert out.startswith(f"https://bob:{URL_MASK}@api.example.test/v1/items?api_key={URL_MASK}&")
    assert "page=2" in out


def test_urls_and_bearer_credentials_inside_texts_are_masked() -> None:
    text = f"POST https://u:{SECRET}@h.test/x?token={SECRET} failed; sent Authorization: Bearer {SECRET}"
    out = redact_text(text)
    assert SECRET not in out
    assert "POST https://u:" in out and "failed" in out


def test_ordinary_fields_are_kept() -> None:
    value = {"idempotency_key": "k-1", "correlation_id": "c", "url": "https://h.test/a?page=1", "n": 3}
    assert redact(value) == value


secret_names = st.sampled_from(
    ["authorization", "Proxy-Authorization", "api_key", "apiKey", "password", "token"]
)


@given(
    doc=st.recursive(
        st.none() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=10,
    ),
    name=secret_names,
)
def test_a_planted_credential_never_survives_and_redaction_is_idempotent(doc: object, name: str) -> None:
    planted = {"payload": doc, "headers": {name: SECRET}, "link": f"https://x:{SECRET}@h.test/"}
    out = redact(planted)
    assert SECRET not in json.dumps(out)
    assert redact(out) == out


def test_headers_query_keys_and_scheme_credentials_named_in_the_security_model() -> None:
    headers = {"Authorization": SECRET, "Proxy-Authorization": SECRET, "X-Api-Key": SECRET, "Cookie": SECRET}
    assert redact(headers) == dict.fromkeys(headers, MASK)
    for param in ("api_key", "token", "key", "secret", "password", "access_token", "sig"):
        assert SECRET not in redact_text(f"GET https://h.test/p?{param}={SECRET}&page=1 failed"), param
    assert redact_text(f"sent bearer {SECRET}") == f"sent bearer {MASK}"


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12,
)


@given(doc=json_docs)
def test_the_cheap_precheck_never_skips_a_document_redaction_would_change(doc: object) -> None:
    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False)):
        if not might_hold_credentials(text):
            assert redact(json.loads(text)) == json.loads(text)


@given(
    doc=json_docs,
    name=st.sampled_from(["Authorization", "x-api-key", "Cookie", "client_secret", "AUTH", "jwt"]),
)
def test_the_precheck_sees_every_planted_credential(doc: object, name: str) -> None:
    text = json.dumps({"d": doc, name: SECRET})
    assert might_hold_credentials(text)
    assert SECRET not in json.dumps(redact(json.loads(text)))


def test_a_value_that_only_references_secrets_is_kept_and_forged_ones_are_not() -> None:
    kept = {"Authorization": "Bearer ${{ secrets.API_TOKEN }}", "X-Api-Key": "${{ secrets.K }}"}
    assert redact(kept) == kept
    for masked in (
        "Bearer ${{ secrets.API_TOKEN }} extra",
        "$${{ secrets.K }}",
        f"{SECRET} ${{{{ secrets.K }}}}",
    ):
        assert redact({"Authorization": masked}) == {"Authorization": MASK}, masked
