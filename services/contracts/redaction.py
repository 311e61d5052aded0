"""Redaction of credentials in well-known places, wherever history is written or shown (pure).

Run history holds what tenants and actions handed the engine: trigger data, step inputs and
outputs, error texts. Some of it is credentials in well-known places: authorization-like headers
and fields (``Authorization``, ``Proxy-Authorization``, ``X-Api-Key``, ``Cookie``, ``password``…),
the userinfo of URLs (``https://user:pass@host``), key-like query parameters (``?api_key=…``,
``token``, ``key``, ``sig``…) and scheme credentials in texts (``Bearer …``). :func:`redact`
replaces those values by :data:`MASK` wherever they appear, keeping the shape of the document so
an operator can still read it.

This is defence in depth, used by the projector (events and dead letters before they are
stored), the dead-letter builder, the executor (error messages, log lines) and the console (on
display). Secrets a workflow references (``${{ secrets.NAME }}``) never reach history in the first
place: see :mod:`services.secrets`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "[redacted]"
URL_MASK = "***"
"""Inside URLs (brackets would read as an IPv6 host)."""

_SECRET_NAME = re.compile(
    r"(^|[-_.])(authorization|proxy[-_]?authorization|cookie|set[-_]?cookie|password|passwd|pwd|secret|"
    r"client[-_]?secret|token|access[-_]?token|refresh[-_]?token|id[-_]?token|api[-_]?key|apikey|"
    r"x[-_]?api[-_]?key|private[-_]?key|signature|sig|credentials?|auth|jwt|passphrase)($|[-_.])",
    re.IGNORECASE,
)
# "Bearer ${{ secrets.API_TOKEN }}" as the router writes it (services.secrets.references): data
# spelling a reference reaches history encoded ("$${{ …"), which this does not match.
_REFERENCES_ONLY = re.compile(
    r"(?:(?i:Bearer|Basic|Digest|Token) )?(?:\$\{\{ secrets\.[A-Z][A-Z0-9_]{0,63} \}\} ?)+"
)
# A URL inside any text: scheme://[userinfo@]host... up to whitespace or a quote.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s\"'<>]+")
# "Bearer abc", "Basic abc" anywhere in a text (e.g. an echoed header line in an error message).
_SCHEME_CREDENTIAL = re.compile(r"\b(Bearer|Basic|Digest|Token)\s+[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE)


# Cheap pre-check over raw JSON text (substring tests: the projector runs it on every event): any
# text redact() could change contains one of these, lowercased. Keys and values are matched after
# JSON unescaping, hence any backslash counts; non-ASCII text always counts (case-insensitive
# matching folds a few non-ASCII letters, e.g. the Kelvin sign, onto ASCII ones). ``idempotency_key``,
# in every step_scheduled event, is no credential and does not count.
_WORDS = (
    "auth", "cookie", "pass", "pwd", "secret", "token", "sig", "credential", "jwt", "bearer", "basic",
    "digest", "://", "\\",
)  # fmt: skip


def might_hold_credentials(text: str) -> bool:
    """False only when :func:`redact` would leave the JSON (or plain) ``text`` unchanged."""
    if not text.isascii():
        return True
    low = text.lower()
    return any(word in low for word in _WORDS) or low.count("key") > low.count("idempotency_key")


def secret_name(name: str) -> bool:
    """Whether a field, header or query parameter called ``name`` holds a credential."""
    return bool(_SECRET_NAME.search(name))


def redact(value: Any) -> Any:
    """``value`` with every known credential place masked (dicts, lists and strings, recursively)."""
    if isinstance(value, dict):
        return {k: (MASK if _masked(k, v) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _masked(key: Any, value: Any) -> bool:
    # Only scalar values under a secret name are masked: {"auth": {"type": "oauth"}} keeps its shape.
    # A value that is only secret references (and a scheme) names secrets, holds none: it is kept.
    if isinstance(value, str) and _REFERENCES_ONLY.fullmatch(value):
        return False
    return isinstance(key, str) and secret_name(key) and not isinstance(value, dict | list)


def redact_text(text: str) -> str:
    """``text`` with URL userinfo, key-like URL query values and scheme credentials masked."""
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group(1)} {MASK}", text)


def redact_url(url: str) -> str:
    """One URL with its password (or lone user token) and key-like query values masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
            netloc = f"{user}:{URL_MASK}@{host}" if user else f"{URL_MASK}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(secret_name(k) or k.lower() in _KEY_PARAMS for k, _ in pairs):
                query = urlencode(
                    [(k, URL_MASK if secret_name(k) or k.lower() in _KEY_PARAMS else v) for k, v in pairs],
                    safe="*",
                )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL (e.g. a bad port): mask it all rather than leak it
        return MASK


# Query parameters that are credentials although their names are short or generic.
_KEY_PARAMS = frozenset(
    {"key", "code", "sas", "sv", "x-amz-signature", "x-amz-credential", "x-goog-signature"}
)
