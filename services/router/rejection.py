"""The router core's refusal of one inbox record: :class:`StepRejected`, dead-lettered with its kind.

Its own module so that the core's parts (:mod:`services.router.control`) can reject a record
without importing the core."""

from __future__ import annotations


class StepRejected(Exception):
    """An inbox record whose step cannot be applied: it is dead-lettered with ``kind``."""

    def __init__(self, kind: str, message: str, original: bytes | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.original = original
