"""Just enough PromQL parsing for the tests: which metric names (and label names) an expression uses."""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(\s*\()?")
_DURATION = re.compile(r"\[[^\]]*\]")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")


@dataclass(frozen=True)
class Usage:
    metrics: frozenset[str]
    """Metric names used as selectors."""
    matchers: frozenset[tuple[str, str]]
    """(metric, label) of every label matcher inside ``metric{...}``."""
    grouping: frozenset[str]
    """Label names of by/without/on/ignoring clauses."""


def usage(expr: str) -> Usage:
    text = _STRING.sub('""', expr)
    grouping = {
        label.strip() for _, labels in _GROUPING.findall(text) for label in labels.split(",") if label.strip()
    }
    text = _GROUPING.sub(" ", text)
    matchers = {
        (metric, label)
        for metric, body in _SELECTOR.findall(text)
        for label, _ in _MATCHER.findall(body)
        if metric
    }
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = _DURATION.sub(" ", text)
    names = set()
    for name, call in _IDENT.findall(text):
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d.*", name):
            continue
        names.add(name)
    return Usage(frozenset(names), frozenset(matchers), frozenset(grouping))
