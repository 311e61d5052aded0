"""The console's /v1 API on a real engine, broker and database: filters, keyset pages, redaction,
replay/cancel through the router, cross-tenant refusals and every refusal of the webhook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.console.app import create_app
from services.console.config import ConsoleSettings
from tests.integration.console_support import SECRET, World, console_world, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, database_admin_url: str) -> Iterator[World]:
    with console_world(kafka_bootstrap, database_admin_url) as w:
        yield w


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    app = create_app(world.settings, ConsoleSettings(grafana_url="http://grafana.test"))
    with TestClient(app) as c:
        wait_until(lambda: app.state.console.definition("acme", "flaky", 1), "registry loaded")
        yield c


def as_(world: World, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[who]}"}


def run_ids(client: TestClient, world: World, who: str = "ops@acme", **params: Any) -> list[str]:
    r = client.get("/v1/runs", params={"limit": 500, **params}, headers=as_(world, who))
    assert r.status_code == 200, r.text
    return [row["run_id"] for row in r.json()["runs"]]


HOOK_KEY = "hook-1"


def test_runs_filters(client: TestClient, world: World) -> None:
    # replay tests change the replay-* runs' states and the webhook test adds a run: allow for both
    acme = {v for k, v in world.runs.items() if not k.startswith("beta")}
    hook = {world.eng.run_id("flaky", HOOK_KEY)}
    failed = {world.runs[f"fail-{i}"] for i in range(3)}
    replayable = {world.runs[f"replay-{i}"] for i in range(3)}
    assert set(run_ids(client, world)) - hook == acme
    assert failed <= set(run_ids(client, world, state="failed")) <= failed | replayable
    assert set(run_ids(client, world, state="failed", error_kind="upstream_down")) == failed
    assert set(run_ids(client, world, error_kind="upstream_down")) == failed
    assert set(run_ids(client, world, workflow="flaky", version=1)) - hook == acme
    assert run_ids(client, world, version=2) == []
    assert run_ids(client, world, workflow="linear") == []
    assert run_ids(client, world, idempotency_key="ok-3") == [world.runs["ok-3"]]
    correlation = world.sql("select correlation_id from runs where run_id = %s", world.runs["ok-5"])
    assert run_ids(client, world, correlation_id=correlation) == [world.runs["ok-5"]]
    assert run_ids(client, world, created_from="2999-01-01T00:00:00Z") == []
    assert run_ids(client, world, created_to="2000-01-01") == []
    assert set(run_ids(client, world, created_from="1h", error_kind="upstream_down")) == failed
    params = {"error_kind": "upstream_down"}
    counts = client.get("/v1/runs/counts", params=params, headers=as_(world, "ops@acme")).json()
    assert counts == {"pending": 0, "running": 0, "retrying": 0, "succeeded": 0, "failed": 3, "cancelled": 0}
    counts = client.get("/v1/runs/counts", headers=as_(world, "ops@acme")).json()
    assert counts["failed"] + counts["succeeded"] == len(run_ids(client, world))
    everything = set(world.runs.values())
    assert set(run_ids(client, world, "root@ops")) - hook == everything
    assert set(run_ids(client, world, "root@ops", tenant="beta")) == {
        world.runs["beta-0"],
        world.runs["beta-1"],
    }


def test_bad_filters_are_refused(client: TestClient, world: World) -> None:
    for params in ({"state": "exploded"}, {"version": "x"}, {"created_from": "yesterday-ish"}, {"limit": 0}):
        r = client.get("/v1/runs", params=params, headers=as_(world, "ops@acme"))
        assert r.status_code == 422, (params, r.text)
    r = client.get("/v1/runs", params={"cursor": "garbage!"}, headers=as_(world, "ops@acme"))
    assert r.status_code == 422 and r.json()["detail"]["error"] == "bad_cursor"


def test_keyset_pages_cover_every_run_once_newest_first(client: TestClient, world: World) -> None:
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/runs", params=params, headers=as_(world, "root@ops")).json()
        seen.extend(body["runs"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    total = world.sql("select count(*) from runs")
    assert len(seen) == total and pages == -(-total // 4)
    assert len({r["run_id"] for r in seen}) == len(seen)
    keys = [(r["created_at"], r["run_id"]) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_run_detail_redacts_credentials(client: TestClient, world: World) -> None:
    r = client.get(f"/v1/runs/{world.runs['secret']}", headers=as_(world, "ops@acme"))
    assert r.status_code == 200
    assert SECRET not in r.text
    body = r.json()
    assert body["run"]["trigger_data"]["password"] == "[redacted]"
    assert body["run"]["trigger_data"]["url"] == "https://svc:***@api.h.test/hook?api_key=***&page=1"
    notify = next(s for s in body["steps"] if s["step_id"] == "notify")
    attempt = notify["attempt_rows"][0]
    assert attempt["inputs"]["headers"]["Authorization"] == "[redacted]"
    assert attempt["output"]["url"].startswith("https://svc:***@")
    assert {"prepare", "call", "notify"} == {s["step_id"] for s in body["steps"]}
    assert body["dag"] == [
        {"step_id": "prepare", "needs": []},
        {"step_id": "call", "needs": ["prepare"]},
        {"step_id": "notify", "needs": ["call"]},
    ]
    assert [e["seq"] for e in body["events"]] == list(range(1, len(body["events"]) + 1))
    # the projector redacted it before storing it (the console redacts again on display)
    assert SECRET not in json.dumps(
        world.sql("select trigger_data from runs where run_id = %s", world.runs["secret"])
    )


def test_authentication_refusals(client: TestClient, world: World) -> None:
    assert client.get("/v1/runs").status_code == 401
    r = client.get("/v1/runs", headers={"Authorization": "Bearer sy_aaaaaaaaaaaa_" + "b" * 43})
    assert r.status_code == 401 and r.json()["detail"]["error"] == "bad_token"
    assert client.get("/v1/runs", headers=as_(world, "revoked@acme")).status_code == 401
    trigger_token = {"Authorization": f"Bearer {world.trigger_tokens['acme']}"}
    assert client.get("/v1/runs", headers=trigger_token).status_code == 401  # not an operator token
    assert client.get("/v1/me", headers=as_(world, "viewer@acme")).json() == {
        "name": "viewer@acme",
        "roles": {"acme": "viewer"},
    }


def test_another_tenants_records_are_refused_everywhere(client: TestClient, world: World) -> None:
    h = as_(world, "ops@acme")
    beta_run = world.runs["beta-0"]
    assert run_ids(client, world, tenant="beta") == []
    assert client.get(f"/v1/runs/{beta_run}", headers=h).status_code == 404
    assert client.get(f"/v1/runs/{beta_run}", headers=as_(world, "ops@beta")).status_code == 200
    for action in ("replay", "cancel"):
        r = client.post(f"/v1/runs/{beta_run}/{action}", json={"reason": "x"}, headers=h)
        assert r.status_code == 404, r.text
    r = client.post("/v1/replays", json={"tenant": "beta", "reason": "x"}, headers=h)
    assert r.status_code == 404
    assert client.get("/v1/tenants/beta", headers=h).status_code == 404
    assert [t["tenant"] for t in client.get("/v1/tenants", headers=h).json()["tenants"]] == ["acme"]
    letters = client.get("/v1/dead-letters", headers=h).json()["dead_letters"]
    assert {d["tenant"] for d in letters} == {"acme"}
    beta_dlq = world.sql("select dlq_id from dead_letters where tenant = 'beta'")
    assert client.get(f"/v1/dead-letters/{beta_dlq}", headers=h).status_code == 404
    assert {d["tenant"] for d in client.get("/v1/definitions", headers=h).json()["definitions"]} == {"acme"}
    assert client.get("/v1/definitions/beta/linear/1", headers=h).status_code == 404
    assert client.get("/v1/definitions/beta/linear/1", headers=as_(world, "root@ops")).status_code == 200


def test_a_viewer_reads_but_may_not_act(client: TestClient, world: World) -> None:
    h = as_(world, "viewer@acme")
    run = world.runs["fail-2"]
    assert client.get(f"/v1/runs/{run}", headers=h).status_code == 200
    r = client.post(f"/v1/runs/{run}/replay", json={"reason": "x"}, headers=h)
    assert r.status_code == 403 and r.json()["detail"]["error"] == "forbidden"
    r = client.post("/v1/replays", json={"tenant": "acme", "reason": "x", "dry_run": False}, headers=h)
    assert r.status_code == 403
    r = client.post("/v1/runs/{run}/replay", json={"reason": ""}, headers=as_(world, "ops@acme"))
    assert r.status_code == 422
    r = client.post(
        f"/v1/runs/{run}/replay", json={"reason": "x", "step_only": True}, headers=as_(world, "ops@acme")
    )
    assert r.status_code == 422


def wait_outcome(client: TestClient, world: World, command_id: str, who: str = "ops@acme") -> dict[str, Any]:
    def decided() -> dict[str, Any] | None:
        r = client.get(f"/v1/commands/{command_id}", headers=as_(world, who))
        return r.json() if r.status_code == 200 else None

    outcome: dict[str, Any] = wait_until(decided, f"decision on {command_id}")
    return outcome


def test_replay_and_cancel_go_through_the_router_as_the_operator(client: TestClient, world: World) -> None:
    run = world.runs["replay-0"]
    r = client.post(
        f"/v1/runs/{run}/replay", json={"reason": "upstream fixed"}, headers=as_(world, "ops@acme")
    )
    assert r.status_code == 202, r.text
    sent = r.json()
    assert sent["requester"] == "ops@acme" and sent["kind"] == "replay_run"
    outcome = wait_outcome(client, world, sent["command_id"])
    assert outcome["outcome"] == "accepted" and outcome["requester"] == "ops@acme"
    assert outcome["reason"] == "upstream fixed"
    world.wait_sql("select state from runs where run_id = %s", "succeeded", 60, run)
    # the router refuses cancelling a finished run; the console shows its reason
    r = client.post(f"/v1/runs/{run}/cancel", json={"reason": "too late"}, headers=as_(world, "ops@acme"))
    assert r.status_code == 202
    refused = wait_outcome(client, world, r.json()["command_id"])
    assert refused["outcome"] == "refused" and refused["refusal"]
    detail = client.get(f"/v1/runs/{run}", headers=as_(world, "ops@acme")).json()
    assert [c["outcome"] for c in detail["control_commands"]] == ["accepted", "refused"]
    assert client.get(f"/v1/commands/{sent['command_id']}", headers=as_(world, "ops@beta")).status_code == 404


def test_bulk_replay_dry_run_then_for_real(client: TestClient, world: World) -> None:
    body = {"tenant": "acme", "reason": "bulk", "error_kind": "replayable"}
    dry = client.post("/v1/replays", json=body, headers=as_(world, "ops@acme")).json()
    expected = {world.runs["replay-1"], world.runs["replay-2"]}
    assert dry["dry_run"] is True and set(dry["run_ids"]) == expected and dry["failed_steps"] == len(expected)
    assert world.sql("select count(*) from control_commands where reason = 'bulk'") == 0
    real = client.post("/v1/replays", json={**body, "dry_run": False}, headers=as_(world, "ops@acme")).json()
    assert len(real["command_ids"]) == len(expected)
    for command_id in real["command_ids"]:
        assert wait_outcome(client, world, command_id)["outcome"] == "accepted"
    for run in expected:
        world.wait_sql("select state from runs where run_id = %s", "succeeded", 60, run)


def test_dead_letters_tenants_and_definitions(client: TestClient, world: World) -> None:
    h = as_(world, "ops@acme")
    letters = client.get("/v1/dead-letters", headers=h).json()["dead_letters"]
    letters = [d for d in letters if d["original_key"] == "garbage-acme"]
    assert [d["error_kind"] for d in letters] == ["invalid_json"], letters
    one = client.get(f"/v1/dead-letters/{letters[0]['dlq_id']}", headers=h).json()
    assert "nope" in one["original_value"]["text"] and one["original_key"] == "garbage-acme"
    t = client.get("/v1/tenants/acme", headers=h).json()
    assert t["config"]["max_concurrent_runs"] == 100 and "keyring" not in t["config"]
    assert t["usage"]["in_flight"] == 0 and t["usage"]["pending"] == 0
    assert t["grafana_url"] == "http://grafana.test/d/switchyard-tenant/switchyard-tenant?var-tenant=acme"
    names = [
        (d["name"], d["version"]) for d in client.get("/v1/definitions", headers=h).json()["definitions"]
    ]
    assert names == [("flaky", 1)]
    assert "/v1/runs" in client.get("/v1/openapi.json").json()["paths"]


def trigger(client: TestClient, tenant: str, token: str | None, body: Any, **headers: str) -> Any:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers.setdefault("Content-Type", "application/json")
    return client.post(f"/v1/tenants/{tenant}/triggers", content=content, headers=headers)


def test_webhook_refusals_each_have_a_clear_4xx(client: TestClient, world: World) -> None:
    acme = world.trigger_tokens["acme"]
    good = {"event_type": "go", "data": {"failures": 0, "url": "u", "auth": "a"}, "idempotency_key": "w-1"}
    cases: list[tuple[int, str, Any]] = [
        (401, "unauthenticated", trigger(client, "acme", None, good)),
        (404, "unknown_tenant", trigger(client, "nobody", acme, good)),
        (403, "bad_token", trigger(client, "acme", world.trigger_tokens["beta"], good)),
        (403, "bad_token", trigger(client, "acme", world.tokens["ops@acme"], good)),
        (409, "tenant_suspended", trigger(client, "gamma", world.trigger_tokens["gamma"], good)),
        (400, "invalid_json", trigger(client, "acme", acme, b'{"event_type": "go",')),
        (400, "invalid_json", trigger(client, "acme", acme, b'{"event_type": "go", "data": NaN}')),
        (400, "invalid_json", trigger(client, "acme", acme, b'{"event_type": "go", "data": "\\ud800"}')),
        (422, "bad_body", trigger(client, "acme", acme, {"data": {}})),
        (422, "bad_body", trigger(client, "acme", acme, {"event_type": "go", "tenant": "beta"})),
        (422, "bad_body", trigger(client, "acme", acme, ["not", "an", "object"])),
        (422, "bad_body", trigger(client, "acme", acme, {"event_type": "go", "idempotency_key": "k" * 600})),
        (413, "oversized", trigger(client, "acme", acme, {"event_type": "go", "data": "x" * 300_000})),
        (413, "oversized", trigger(client, "acme", acme, {"event_type": "go", "data": "x" * 263_000})),
    ]
    for status, error, response in cases:
        assert (response.status_code, response.json()["detail"]["error"]) == (status, error), response.text


def test_webhook_trigger_starts_one_run_per_idempotency_key(client: TestClient, world: World) -> None:
    acme = world.trigger_tokens["acme"]
    body = {"event_type": "go", "data": {"failures": 0, "kind": "x", "url": "u", "auth": "a"}}
    first = trigger(client, "acme", acme, body, **{"Idempotency-Key": HOOK_KEY})
    assert first.status_code == 202, first.text
    assert first.json()["idempotency_key"] == HOOK_KEY
    assert first.json()["topic"] == f"{world.settings.topic_prefix}.tenant.acme.triggers"
    again = trigger(client, "acme", acme, {**body, "idempotency_key": HOOK_KEY})
    assert again.status_code == 202
    run = world.eng.run_id("flaky", HOOK_KEY)
    world.wait_sql("select state from runs where run_id = %s", "succeeded", 60, run)
    assert world.sql("select count(*) from runs where idempotency_key = %s", HOOK_KEY) == 1
