"""Which key signs this process's commands, and the global operator keys setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.config import Settings
from services.control.keys import NoOperatorKey, configured_key
from services.workflow.signing import generate_keypair


def key_file(directory: Path, name: str) -> tuple[Path, str]:
    private, public = generate_keypair()
    path = directory / name
    path.write_text(private + "\n")
    return path, public


def test_the_key_id_defaults_to_the_file_name(tmp_path: Path) -> None:
    path, _ = key_file(tmp_path, "alice@acme.key")
    assert configured_key(Settings(), path).key_id == "alice@acme"
    assert configured_key(Settings(), path, "alice-2").key_id == "alice-2"


def test_the_configured_default_key_is_used_without_key(tmp_path: Path) -> None:
    path, _ = key_file(tmp_path, "console.key")
    settings = Settings(operator_key_file=str(path), operator_key_id="gateway")
    assert configured_key(settings).key_id == "gateway"
    other, _ = key_file(tmp_path, "bob.key")
    assert configured_key(settings, other).key_id == "bob"  # --key wins, with its own name


def test_no_key_or_an_unreadable_one_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NoOperatorKey, match="switchyard operator keygen"):
        configured_key(Settings())
    with pytest.raises(NoOperatorKey, match="cannot read operator key"):
        configured_key(Settings(), tmp_path / "missing.key")
    (tmp_path / "bad.key").write_text("not base64!")
    with pytest.raises(NoOperatorKey, match="cannot read operator key"):
        configured_key(Settings(), tmp_path / "bad.key")


def test_global_operator_keys_must_be_ed25519_public_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    _, public = generate_keypair()
    monkeypatch.setenv("SWITCHYARD_OPERATOR_KEYS", f'{{"ops@hq": "{public}"}}')
    assert Settings().operator_keys == {"ops@hq": public}
    with pytest.raises(ValidationError, match="operator key 'ops@hq'"):
        Settings(operator_keys={"ops@hq": "c2hvcnQ="})
