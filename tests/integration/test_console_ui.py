"""The console's web UI in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
log in, filter the runs, open a failed run, replay it and watch it succeed. Screenshots go to
``tests/artifacts/console/`` (git-ignored)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.console.app import create_app
from tests.integration.console_support import World, console_world

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    """Debian's chromium; in CI its absence fails the test, locally it skips it with the reason."""
    path = os.environ.get("SWITCHYARD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        message = "no chromium: `apt-get install chromium` (Debian's package) to run the UI test"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def console_url(kafka_bootstrap: str, database_admin_url: str) -> Iterator[tuple[str, World]]:
    import uvicorn

    with console_world(kafka_bootstrap, database_admin_url, failing=1) as world:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(world.settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="console", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "console did not start"
        try:
            yield f"http://127.0.0.1:{port}", world
        finally:
            server.should_exit = True
            thread.join(10)


def test_filter_open_a_failed_run_replay_it_and_see_it_succeed(console_url: tuple[str, World]) -> None:
    executable = chromium()
    from playwright.sync_api import expect, sync_playwright

    url, world = console_url
    failed_run = world.runs["fail-0"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/runs")
            expect(page).to_have_url(f"{url}/login")
            page.fill("input[name=token]", world.tokens["ops@acme"])
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{url}/runs")
            expect(page.locator("#runs tbody tr[data-run]")).to_have_count(12 + 1 + 3 + 1)
            expect(page.locator("#counts [data-state=failed] .count")).to_have_text("4")
            page.screenshot(path=str(ARTIFACTS / "runs.png"), full_page=True)

            page.select_option("select[name=state]", "failed")
            page.fill("input[name=error_kind]", "upstream_down")
            page.click("#filters button[type=submit]")
            rows = page.locator("#runs tbody tr[data-run]")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-run", failed_run)
            page.screenshot(path=str(ARTIFACTS / "runs-filtered.png"), full_page=True)

            rows.first.locator("a").click()
            expect(page).to_have_url(f"{url}/runs/{failed_run}")
            expect(page.locator("#run-state")).to_have_text("failed")
            expect(page.locator("#dag g[data-step=call]")).to_have_attribute("data-state", "failed")
            expect(page.locator("#dag g[data-step=notify]")).to_have_attribute("data-state", "unknown")
            page.screenshot(path=str(ARTIFACTS / "run-failed.png"), full_page=True)

            page.fill("#replay-form input[name=reason]", "upstream fixed")
            page.click("#replay")
            expect(page.locator("#flash")).to_contain_text("replay_run sent")
            expect(page.locator("#run-state")).to_have_text("succeeded", timeout=60_000)
            expect(page.locator("#dag g[data-step=notify]")).to_have_attribute("data-state", "succeeded")
            decision = page.locator("#commands tbody tr[data-command]")
            expect(decision).to_have_count(1)
            expect(decision.first).to_contain_text("ops@acme")
            expect(decision.first).to_contain_text("accepted")
            page.screenshot(path=str(ARTIFACTS / "run-replayed.png"), full_page=True)
            page.screenshot(  # README's picture
                path=str(ARTIFACTS / "run-replayed-top.png"),
                clip={"x": 0, "y": 0, "width": 1200, "height": 720},
            )

            page.goto(f"{url}/tenants/acme")
            expect(page.locator("#in-flight")).to_contain_text("0 of 100")
            page.goto(f"{url}/dead-letters")
            expect(page.locator("#dead-letters")).to_contain_text("invalid_json")
            page.screenshot(path=str(ARTIFACTS / "dead-letters.png"), full_page=True)
        finally:
            browser.close()
    assert world.sql("select requester from control_commands where run_id = %s", failed_run) == "ops@acme"


def test_forms_without_the_sessions_csrf_token_are_refused(console_url: tuple[str, World]) -> None:
    import httpx

    url, world = console_url
    with httpx.Client(base_url=url, follow_redirects=False) as client:
        login = client.get("/login")
        assert login.status_code == 200
        r = client.post("/login", data={"token": world.tokens["ops@acme"], "csrf_token": "forged"})
        assert r.status_code == 403
        csrf = login.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        r = client.post("/login", data={"token": world.tokens["ops@acme"], "csrf_token": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/runs"
        run = world.runs["fail-0"]
        r = client.post(f"/runs/{run}/replay", data={"reason": "x", "csrf_token": "forged"})
        assert r.status_code == 403
        assert client.get(f"/runs/{world.runs['beta-0']}").status_code == 404
    assert world.sql("select count(*) from control_commands") == 0
