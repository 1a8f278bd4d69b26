"""Every page of the dashboard in a real browser, over real runs from a real worker."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.dashboard.conftest import Dashboard

PAGES_TIMEOUT = 60


def _fill_history(d: Dashboard) -> dict[str, str]:
    """A succeeded run with logs, a failed run (two attempts), and a running one."""
    ok = d.flow("add_up").submit(n=4)
    bad = d.flow("doomed").submit(x=13)
    slow = d.flow("slow").submit(ticks=400)
    d.wait_status(ok.id, "succeeded")
    d.wait_status(bad.id, "failed")
    d.wait_status(slow.id, "running")
    return {"ok": ok.id, "bad": bad.id, "slow": slow.id}


def _no_horizontal_scroll(tab: Any) -> None:
    overflow = tab.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, f"the page scrolls sideways by {overflow}px"


def test_every_page_renders_real_data(sqlite_dashboard: Dashboard, open_page: Any) -> None:
    d = sqlite_dashboard
    runs = _fill_history(d)
    page = open_page(d.url)
    tab = page.tab

    page.go("/")
    tab.get_by_role("heading", name="Overview").wait_for()
    assert tab.locator(".failures").get_by_text("ValueError: bad value 13").count() == 1
    assert "slow" in tab.locator("#overview-live").inner_text()  # running now
    assert tab.locator(".chart .uplot").count() == 1  # the activity chart was drawn
    # Times are rewritten to the browser's zone (Europe/Paris here), UTC on hover.
    first_time = tab.locator("time[datetime]").first
    assert "UTC" in (first_time.get_attribute("title") or "")
    page.shot("overview")

    page.go("/flows")
    for name in ("add_up", "doomed", "slow", "month_end"):
        assert tab.get_by_role("link", name=name, exact=True).count() == 1
    assert "every 6 h" in tab.locator("table.flows").inner_text()
    assert tab.locator(".spark-bar.s-failed").count() >= 1
    page.shot("flows")
    tab.get_by_role("searchbox").fill("books")  # htmx filters as you type
    expect(tab.locator("table.flows tbody tr")).to_have_count(1)
    assert "month_end" in tab.locator("table.flows").inner_text()

    page.go("/flows/add_up")
    tab.get_by_role("heading", name="Trigger a run").wait_for()
    assert tab.locator("#params").input_value().strip().startswith("{")
    assert tab.locator(".chart .uplot").count() == 1  # duration chart
    assert runs["ok"][:16] in tab.locator("#runs-table").inner_text()
    page.shot("flow")

    page.go("/runs")
    table = tab.locator("#runs-table")
    for run_id in runs.values():
        assert run_id[:16] in table.inner_text()
    page.shot("runs")
    page.go("/runs?status=failed")
    assert runs["bad"][:16] in table.inner_text()
    assert runs["ok"][:16] not in table.inner_text()

    page.go(f"/runs/{runs['ok']}")
    tab.locator(".run-status").get_by_text("succeeded").wait_for()
    logs = tab.locator("#log-lines")
    assert "fetching 4 items" in logs.inner_text()
    assert "sum is 10" in logs.inner_text()
    assert tab.locator(".gantt .g-row:not(.g-axis)").count() == 3  # attempts, fetch, total
    assert "10" in tab.locator("pre.json").nth(1).inner_text()  # the result
    page.shot("run-succeeded")

    page.go(f"/runs/{runs['bad']}")
    failure = tab.locator("section.failure")
    assert "ValueError: bad value 13" in failure.inner_text()
    assert "Traceback (most recent call last)" in failure.locator("pre.trace").inner_text()
    assert tab.locator(".gantt .g-row.failing .g-label").inner_text().startswith("explode")
    assert tab.locator(".steps li.failing").count() == 1
    assert tab.locator("table tbody tr").filter(has_text="failed, retried").count() == 1
    # Log filter: warnings and up keeps the warning line only.
    assert "about to fail with x=13" in tab.locator("#log-lines").inner_text()
    tab.locator("#log-level").select_option("ERROR")
    assert tab.locator("#log-lines .log:not(.hidden)").count() == 0
    tab.locator("#log-level").select_option("DEBUG")
    tab.locator("#log-search").fill("x=13")
    visible = tab.locator("#log-lines .log:not(.hidden)")
    assert visible.count() == 2 and "about to fail" in visible.first.inner_text()  # 2 attempts
    page.shot("run-failed")

    page.go(f"/runs/{runs['slow']}")
    tab.locator(".run-status").get_by_text("running").wait_for()
    # Logs follow the running run: new tick lines arrive without a reload.
    before = tab.locator("#log-lines .log").count()
    tab.locator("#log-lines .log").nth(before + 2).wait_for()
    page.shot("run-running", full_page=False)

    later = d.flow("add_up").with_options(delay=3600).submit(n=1)
    page.go(f"/runs/{later.id}")
    expect(tab.locator("section.waiting")).to_contain_text("not due until")
    page.shot("run-waiting", full_page=False)

    page.go("/schedule")
    tab.locator("table.cal.month").wait_for()
    assert tab.locator("#cal-zone").get_attribute("data-tz") == "Europe/Paris"
    assert "month_end" in tab.locator("table.cal").inner_text()
    page.shot("schedule-month")
    tab.get_by_role("link", name="Week").click()
    tab.locator("ol.cal.week").wait_for()
    assert "add_up" in tab.locator("ol.cal").inner_text()
    page.shot("schedule-week")
    tab.get_by_role("link", name="Day", exact=True).click()
    tab.locator("ol.cal.day").wait_for()
    assert tab.locator("ol.cal.day li").count() == 24

    d.client.set_queue("reports", paused=True)
    page.go("/workers")
    live = tab.locator("#workers-live")
    assert "default" in live.inner_text()
    assert "paused" in live.locator("tr", has_text="reports").inner_text()
    assert tab.locator(".load-chart .load-row").count() == 1
    assert "1 / 4" in tab.locator(".load-chart").inner_text()  # the slow run holds a slot
    page.shot("workers")

    # Phone width: the pages fit, tables scroll inside their card.
    phone = open_page(d.url, width=390, height=844)
    for path in ("/", "/flows", f"/runs/{runs['bad']}", "/schedule", "/workers"):
        phone.go(path)
        _no_horizontal_scroll(phone.tab)
    phone.go(f"/runs/{runs['bad']}")
    phone.shot("phone-run")
    d.flow("slow")  # keep the handle alive until here
    d.client.cancel(runs["slow"])


def test_empty_states_explain_what_to_do(sqlite_url: str, open_page: Any) -> None:
    """A database without flows or runs: each page says what to do next."""
    from legato.api import create_app
    from legato.store import open_store
    from tests.helpers import serving

    store = open_store(sqlite_url)
    try:
        with serving(create_app(store)) as url:
            page = open_page(url)
            page.go("/")
            assert "No worker is running" in page.tab.inner_text("main")
            page.go("/flows")
            assert "legato worker app.py" in page.tab.inner_text("main")
            page.shot("empty-flows")
            page.go("/runs")
            assert "No runs yet" in page.tab.inner_text("main")
            page.go("/schedule")
            assert "No schedules" in page.tab.inner_text("main")
            page.go("/workers")
            assert "Start one with legato worker" in page.tab.inner_text("main")
            response = page.go("/runs/does-not-exist")
            assert response.status == 404
            assert "no run with id" in page.tab.inner_text("main")
            page.errors.remove(
                "Failed to load resource: the server responded with a status of 404 (Not Found)"
            )
            page.tab.goto("about:blank")  # nothing polls the server once it stops
    finally:
        store.close()
