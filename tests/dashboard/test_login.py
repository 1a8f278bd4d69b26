"""Login, roles and CSRF: in a real browser, and on the signed cookie and tokens themselves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from legato.dashboard.security import make_session, read_session
from tests.dashboard.conftest import Dashboard, running_dashboard


@pytest.fixture
def guarded(sqlite_url: str) -> Iterator[Dashboard]:
    """A dashboard whose database has tokens: every page needs a login."""
    with running_dashboard(sqlite_url) as d:
        d.extra["viewer"] = d.client.create_token("watcher", "viewer")["token"]
        d.extra["operator"] = d.client.create_token("ops", "operator")["token"]
        yield d


def _login(page: Any, token: str) -> None:
    page.tab.locator("#token").fill(token)
    page.tab.get_by_role("button", name="Log in").click()


def test_login_is_required_once_tokens_exist(guarded: Dashboard, open_page: Any) -> None:
    handle = guarded.flow("slow").submit(ticks=500)
    guarded.wait_status(handle.id, "running")
    page = open_page(guarded.url)
    tab = page.tab
    for path in ("/", "/flows", "/runs", f"/runs/{handle.id}", "/schedule", "/workers"):
        page.go(path)
        expect(tab).to_have_url(re.compile(r"/login\?next="))
    page.shot("login")

    _login(page, "lgt_not-a-token")
    expect(tab.locator(".notice.error")).to_contain_text("unknown or revoked")
    page.errors.remove(
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    )

    # A viewer sees everything and is offered no action.
    _login(page, guarded.extra["viewer"])
    expect(tab).to_have_url(re.compile(r"/workers$"))  # back where it was going
    page.go(f"/runs/{handle.id}")
    expect(tab.locator(".run-status")).to_contain_text("running")
    assert tab.get_by_role("button", name="Cancel run").count() == 0
    page.go("/flows/add_up")
    assert tab.get_by_role("button", name="Run add_up").count() == 0
    assert "can look but not act" in tab.locator("#trigger").inner_text()
    # ... and the server refuses the action even when asked directly.
    csrf = tab.locator("input[name=csrf]").first.get_attribute("value")
    answer = tab.request.post(
        f"{guarded.url}/runs/{handle.id}/cancel", form={"csrf": csrf or ""}, max_redirects=0
    )
    assert answer.status == 403
    assert guarded.client.store.get_run_status(handle.id) == "running"

    tab.get_by_role("button", name="Log out").click()
    expect(tab).to_have_url(re.compile(r"/login"))
    page.go("/runs")
    expect(tab).to_have_url(re.compile(r"/login\?next="))

    # An operator may act.
    _login(page, guarded.extra["operator"])
    page.go(f"/runs/{handle.id}")
    tab.get_by_role("button", name="Cancel run").click()
    assert guarded.wait_status(handle.id, "cancelled") == "cancelled"

    # Revoking the token ends its sessions.
    guarded.client.revoke_token("ops")
    page.go("/runs")
    expect(tab).to_have_url(re.compile(r"/login\?next="))


def test_actions_need_the_csrf_token(sqlite_dashboard: Dashboard) -> None:
    """An open (loopback, no token) dashboard still refuses forms it did not issue."""
    handle = sqlite_dashboard.flow("slow").submit(ticks=500)
    with httpx.Client(base_url=sqlite_dashboard.url) as http:
        page = http.get("/flows/add_up")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        forged = http.post(f"/runs/{handle.id}/cancel", data={"csrf": "forged"})
        assert forged.status_code == 403
        missing = http.post(f"/runs/{handle.id}/cancel")
        assert missing.status_code == 403
        other_site = http.post(
            f"/runs/{handle.id}/cancel",
            data={"csrf": csrf.group(1)},
            headers={"Origin": "https://evil.example"},
        )
        assert other_site.status_code == 403
        assert sqlite_dashboard.client.store.get_run_status(handle.id) in ("queued", "running")
        # Another browser (no CSRF cookie) cannot reuse this browser's token.
        stranger = httpx.post(
            f"{sqlite_dashboard.url}/runs/{handle.id}/cancel", data={"csrf": csrf.group(1)}
        )
        assert stranger.status_code == 403
        ok = http.post(f"/runs/{handle.id}/cancel", data={"csrf": csrf.group(1)})
        assert ok.status_code == 303
    assert sqlite_dashboard.wait_status(handle.id, "cancelled") == "cancelled"


def test_session_cookies_are_signed_and_expire() -> None:
    secret = b"k" * 32
    cookie = make_session(secret, "tok_abc", now=1000.0)
    assert read_session(secret, cookie, now=1001.0) == "tok_abc"
    assert read_session(b"x" * 32, cookie, now=1001.0) is None  # another server's secret
    _payload, _, signature = cookie.partition(".")
    forged = make_session(secret, "tok_admin", now=1000.0).partition(".")[0]
    assert read_session(secret, f"{forged}.{signature}", now=1001.0) is None
    assert read_session(secret, cookie, now=1000.0 + 13 * 3600) is None  # expired
    assert read_session(secret, "garbage", now=1001.0) is None
    assert read_session(secret, None) is None
