"""The corpus of bad definitions: each file must fail validation with the expected message(s).

YAML files state their expectations in leading ``# expect: <substring>`` comments; JSON files
(which cannot carry comments) are listed in ``bad_definitions/expected.json``. Each expected
substring must appear in one reported problem, rendered as ``path: message``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.workflow import BUILTIN_ACTIONS, DefinitionError, load_definition_file

CORPUS = Path(__file__).parent / "bad_definitions"
SIDECAR: dict[str, list[str]] = json.loads((CORPUS / "expected.json").read_text())


def _expectations(path: Path) -> list[str]:
    if path.name in SIDECAR:
        return SIDECAR[path.name]
    prefix = "# expect: "
    return [line[len(prefix) :].strip() for line in path.read_text().splitlines() if line.startswith(prefix)]


CASES = sorted(
    p for p in CORPUS.iterdir() if p.suffix in {".yaml", ".yml", ".json"} and p.name != "expected.json"
)


def test_corpus_is_not_empty_and_every_case_has_expectations() -> None:
    assert len(CASES) >= 30
    for path in CASES:
        assert _expectations(path), f"{path.name} states no expected error"


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_bad_definition_is_rejected_with_expected_message(path: Path) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition_file(path, known_actions=BUILTIN_ACTIONS)
    rendered = [f"{p.path}: {p.message}" for p in info.value.problems]
    for expected in _expectations(path):
        assert any(expected in r for r in rendered), f"{expected!r} not in {rendered}"
    for problem in info.value.problems:
        assert problem.file == str(path)
        assert str(path) in str(info.value)
