"""Acting from the dashboard in a real browser: trigger, cancel, retry, pause and resume.

These run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.dashboard.conftest import Dashboard
from tests.helpers import wait_for


def test_trigger_from_the_flow_form_runs_and_shows_its_logs(
    dashboard: Dashboard, open_page: Any
) -> None:
    page = open_page(dashboard.url)
    tab = page.tab
    page.go("/flows/add_up")
    editor = tab.locator("#params")
    run_button = tab.get_by_role("button", name="Run add_up")

    # The JSON editor checks what it is given before anything is sent.
    editor.fill('{"n": 5')
    expect(tab.locator("#params-status")).to_contain_text("Invalid JSON")
    expect(run_button).to_be_disabled()
    editor.fill('{"m": 5}')
    expect(tab.locator("#params-status")).to_contain_text("Unknown parameter: m")
    editor.fill('{"n": 5}')
    expect(tab.locator("#params-status")).to_contain_text("Valid parameters")

    run_button.click()
    tab.wait_for_url("**/runs/*")
    run_id = tab.url.rsplit("/", 1)[1]
    assert dashboard.client.run(run_id)["params"] == {"n": 5}
    # The page follows the run live: it turns succeeded and its logs arrive without a reload.
    expect(tab.locator(".run-status")).to_contain_text("succeeded", timeout=60_000)
    expect(tab.locator("#log-lines")).to_contain_text("sum is 15", timeout=30_000)
    expect(tab.locator("pre.json").nth(1)).to_contain_text("15")
    assert dashboard.client.run(run_id)["status"] == "succeeded"


def test_server_side_validation_keeps_the_form(dashboard: Dashboard, open_page: Any) -> None:
    """A request the browser's check let through (here: a bad delay) comes back with the
    error and what was typed."""
    page = open_page(dashboard.url)
    tab = page.tab
    page.go("/flows/add_up")
    tab.locator("#params").fill('{"n": 2}')
    tab.locator("summary", has_text="Options").click()
    tab.locator("input[name=delay]").fill("soon")
    tab.get_by_role("button", name="Run add_up").click()
    expect(tab.locator(".notice.error")).to_contain_text("invalid duration")
    assert '"n": 2' in tab.locator("#params").input_value()
    page.errors.remove(
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    )


def test_cancel_and_retry_from_the_run_page(dashboard: Dashboard, open_page: Any) -> None:
    handle = dashboard.flow("slow").submit(ticks=500)
    dashboard.wait_status(handle.id, "running")
    page = open_page(dashboard.url)
    tab = page.tab
    page.go(f"/runs/{handle.id}")
    expect(tab.locator(".run-status")).to_contain_text("running")
    tab.get_by_role("button", name="Cancel run").click()
    assert dashboard.wait_status(handle.id, "cancelled") == "cancelled"
    expect(tab.locator(".run-status")).to_contain_text("cancelled", timeout=30_000)

    tab.get_by_role("button", name="Retry run").click()
    tab.wait_for_url(lambda url: handle.id not in url)
    retry_id = tab.url.rsplit("/", 1)[1]
    run = dashboard.client.run(retry_id)
    assert run["retry_of"] == handle.id and run["trigger"] == "retry"
    expect(tab.get_by_text("Retry of:")).to_be_visible()
    dashboard.client.cancel(retry_id)


def test_runs_list_updates_live(dashboard: Dashboard, open_page: Any) -> None:
    """The first page of runs refreshes itself: a status change shows without a reload."""
    handle = dashboard.flow("slow").submit(ticks=500)
    dashboard.wait_status(handle.id, "running")
    page = open_page(dashboard.url)
    tab = page.tab
    page.go("/runs")
    row = tab.locator("#runs-table tbody tr", has_text=handle.id[:16])
    expect(row).to_contain_text("running")
    dashboard.client.cancel(handle.id)
    expect(row).to_contain_text("cancelled", timeout=30_000)


def test_pause_and_resume_schedules(dashboard: Dashboard, open_page: Any) -> None:
    page = open_page(dashboard.url)
    tab = page.tab
    page.go("/flows/add_up")
    tab.get_by_role("button", name="Pause schedules").click()
    expect(tab.locator("#schedules")).to_contain_text("paused")
    assert dashboard.client.flow("add_up").schedules_paused
    page.go("/schedule?view=week")
    assert "add_up" not in tab.locator("ol.cal").inner_text()  # paused flows do not fire
    page.shot("schedule-paused")

    page.go("/flows/add_up")
    tab.get_by_role("button", name="Resume schedules").click()
    expect(tab.get_by_role("button", name="Pause schedules")).to_be_visible()
    wait_for(lambda: not dashboard.client.flow("add_up").schedules_paused, timeout=10)
