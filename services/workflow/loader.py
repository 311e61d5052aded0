"""Reading definition documents: YAML or JSON text into plain data, with source positions.

Owns the parsing rules: duplicate keys are errors (not "last one wins"), YAML dates stay strings,
YAML aliases may not expand past :data:`MAX_NODES` nodes (no "billion laughs"), and a document is
at most :data:`MAX_SOURCE_BYTES`. The only I/O is reading the file the caller names.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from services.workflow.models import WorkflowDefinition
from services.workflow.problems import DefinitionError, PathPart, Problem, format_path
from services.workflow.validation import validate_definition_data

MAX_SOURCE_BYTES = 1024 * 1024
MAX_NODES = 100_000

Format = Literal["yaml", "json"]


class _Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps: ``2024-01-01`` stays the string it looks like."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(slots=True)
class ParsedDocument:
    """Parsed data plus what the parser noticed: problems and the line of each JSON path."""

    data: Any
    problems: list[Problem] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)


def detect_format(text: str, filename: str) -> Format:
    """JSON for ``*.json`` or text starting with ``{``; YAML otherwise."""
    lowered = filename.lower()
    if lowered.endswith(".json"):
        return "json"
    if lowered.endswith((".yaml", ".yml")):
        return "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def _walk_yaml(
    node: yaml.Node, path: tuple[PathPart, ...], doc: ParsedDocument, file: str, budget: list[int]
) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        return
    doc.lines.setdefault(format_path(path), node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                _walk_yaml(value_node, path, doc, file, budget)
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                doc.problems.append(
                    Problem(
                        file,
                        format_path((*path, key)),
                        f"duplicate key {key!r} (first at line {seen[key]}); keep only one",
                        line,
                    )
                )
            else:
                seen[key] = line
            _walk_yaml(value_node, (*path, key), doc, file, budget)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk_yaml(item, (*path, i), doc, file, budget)


def _parse_yaml(text: str, file: str) -> ParsedDocument:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        doc = ParsedDocument(None)
        if node is None:
            doc.problems.append(Problem(file, "$", "document is empty"))
            return doc
        budget = [MAX_NODES]
        _walk_yaml(node, (), doc, file, budget)
        if budget[0] < 0:
            doc.problems.append(
                Problem(file, "$", f"document expands to more than {MAX_NODES} nodes (YAML aliases?)")
            )
            return doc
        doc.data = loader.construct_document(node)
        return doc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return ParsedDocument(None, [Problem(file, "$", f"invalid YAML: {reason}", line)])
    finally:
        loader.dispose()


class _Pairs(dict[str, Any]):
    """A JSON object that remembers which keys it saw more than once."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def _plain(value: Any, path: tuple[PathPart, ...], doc: ParsedDocument, file: str) -> Any:
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", []):
            doc.problems.append(
                Problem(file, format_path((*path, key)), f"duplicate key {key!r}; keep only one")
            )
        return {k: _plain(v, (*path, k), doc, file) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, (*path, i), doc, file) for i, v in enumerate(value)]
    return value


def _parse_json(text: str, file: str) -> ParsedDocument:
    doc = ParsedDocument(None)
    try:
        raw = json.loads(text, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as exc:
        doc.problems.append(Problem(file, "$", f"invalid JSON: {exc.msg}", exc.lineno))
        return doc
    except RecursionError:
        doc.problems.append(Problem(file, "$", "invalid JSON: nested too deeply"))
        return doc
    doc.data = _plain(raw, (), doc, file)
    return doc


def parse_document(text: str, filename: str = "<string>", fmt: Format | None = None) -> ParsedDocument:
    """Parse YAML or JSON text without validating it as a workflow."""
    size = len(text.encode())
    if size > MAX_SOURCE_BYTES:
        return ParsedDocument(
            None, [Problem(filename, "$", f"document is {size} bytes; the limit is {MAX_SOURCE_BYTES}")]
        )
    fmt = fmt or detect_format(text, filename)
    doc = _parse_json(text, filename) if fmt == "json" else _parse_yaml(text, filename)
    if doc.data is not None and not isinstance(doc.data, dict) and not doc.problems:
        doc.problems.append(
            Problem(
                filename, "$", f"a workflow definition must be a mapping, not {type(doc.data).__name__}", 1
            )
        )
    return doc


def load_definition_text(
    text: str,
    filename: str = "<string>",
    fmt: Format | None = None,
    known_actions: Collection[str] | None = None,
) -> WorkflowDefinition:
    """Parse and validate a definition; :class:`DefinitionError` lists every problem found."""
    doc = parse_document(text, filename, fmt)
    if doc.data is None or not isinstance(doc.data, dict):
        raise DefinitionError(doc.problems or [Problem(filename, "$", "document is empty")])
    return validate_definition_data(
        doc.data, file=filename, known_actions=known_actions, lines=doc.lines, problems=doc.problems
    )


def load_definition_file(
    path: str | Path, known_actions: Collection[str] | None = None
) -> WorkflowDefinition:
    """Read, parse and validate the definition in ``path`` (YAML or JSON by extension or content)."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DefinitionError([Problem(file, "$", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DefinitionError([Problem(file, "$", f"file is not UTF-8: {exc.reason}")]) from exc
    return load_definition_text(text, file, known_actions=known_actions)
