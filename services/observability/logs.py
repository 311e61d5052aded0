"""Structured logging: one JSON object per line, with tenant, run_id and correlation_id on every line.

Call sites pass identity through ``extra`` or bind it once with :func:`bind`; lines without an
identity carry explicit nulls, so a log query on ``run_id`` never silently misses a field. Every
line is scrubbed (:func:`~services.secrets.masking.scrub_line`): the running attempt's secrets and
known credential places (URL userinfo, key-like query values, ``Bearer …``) are masked.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from services.secrets.masking import scrub_line

IDENTITY_FIELDS = ("tenant", "run_id", "correlation_id")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in IDENTITY_FIELDS:
            line[name] = getattr(record, name, None)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return scrub_line(json.dumps(line, default=str))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{n}={getattr(record, n, None) or '-'}" for n in IDENTITY_FIELDS)
        fields = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _RESERVED and key not in IDENTITY_FIELDS
        )
        base = f"{record.levelname[0]} {record.name}: {record.getMessage()} [{ids}]"
        if fields:
            base += f" {fields}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return scrub_line(base)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed identity fields to every line (merged under call-site ``extra``)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **identity: Any) -> BoundLogger:
    return BoundLogger(logger, identity)


def ids(tenant: str | None, run_id: str | None, correlation_id: str | None, **more: Any) -> Mapping[str, Any]:
    """``extra=`` payload for one line."""
    return {"tenant": tenant, "run_id": run_id, "correlation_id": correlation_id, **more}
