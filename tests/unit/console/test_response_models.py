"""The API's handlers return TypedDicts (for mypy) but FastAPI serialises their responses as the
JSON objects they are: no route takes a TypedDict of :mod:`services.console.responses` as its
response model (which would validate, filter and document every response differently)."""

from __future__ import annotations

from typing import Any, get_type_hints

from fastapi.routing import APIRoute

from services.console import api
from services.contracts.records import JsonObject


def test_every_route_serialises_a_plain_json_object_whatever_its_handler_is_typed() -> None:
    routes = [r for r in api.router.routes if isinstance(r, APIRoute)]
    typed = [r for r in routes if get_type_hints(r.endpoint)["return"] not in (JsonObject, dict[str, int])]
    assert len(typed) >= 10  # the handlers do name their shapes
    for route in routes:
        assert route.response_model in (JsonObject, Any, dict[str, int]), route.path
