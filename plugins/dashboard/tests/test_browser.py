"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Records come from real OpenAI SDK requests through the gateway to the fake upstream. Screenshots of
each page go to $RESPAN_SCREENSHOTS (default: the test's tmp dir). Skipped, loudly, when Chromium or
Playwright is missing (``.ci/run`` installs Chromium with apt when it can).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_kit import ADMIN_KEY

CHROMIUM = os.environ.get("RESPAN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'


def _skip(reason: str) -> None:
    message = f"the dashboard's browser tests are SKIPPED: {reason}"
    warnings.warn(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        _skip("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RESPAN_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    yield page
    context.close()


def _make_records(gw: Any) -> dict[str, str]:
    client = gw.openai()
    ids = {}
    plan = [
        ("a", "gpt-test", "alice", {"team": "search"}),
        ("b", "gpt-test", "bob", {"team": "ads"}),
        ("c", "fake/other-model", "carol", {"team": "search"}),
        ("xss", "gpt-test", XSS_IMG, {"team": XSS_SCRIPT}),
    ]
    for name, model, customer, metadata in plan:
        content = f"{XSS_SCRIPT} {XSS_IMG}" if name == "xss" else f"Hello from {name}"
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}],
            extra_body={"customer_identifier": customer, "metadata": metadata},
        )
        ids[name] = raw.headers["x-respan-log-id"]
    with pytest.raises(Exception):
        client.chat.completions.create(model="fake/fake-error-400", messages=[{"role": "user", "content": "x"}])
    return ids


def _sign_in(page: Any, gw: Any) -> None:
    page.goto(f"{gw.url}/ui/logs")
    assert "/ui/login" in page.url  # no session: redirected to sign-in
    page.fill("#key", ADMIN_KEY)
    page.click("#sign-in")
    page.wait_for_url(f"{gw.url}/ui/logs")


def _rows(page: Any) -> list[str]:
    return page.locator("#records tbody tr").all_inner_texts()


def test_sign_in_filter_detail_plot_sign_out(dashboard_gateway, page: Any, shots: Path) -> None:
    gw = dashboard_gateway()
    ids = _make_records(gw)
    page.goto(f"{gw.url}/ui/usage")
    assert "/ui/login" in page.url
    page.screenshot(path=str(shots / "login.png"))
    page.fill("#key", ADMIN_KEY)
    page.click("#sign-in")
    page.wait_for_url(f"{gw.url}/ui/usage")  # back where the visitor was going

    page.click("nav >> text=Logs")
    rows = _rows(page)
    assert len(rows) == 5 and sum("400" in r for r in rows) == 1
    page.screenshot(path=str(shots / "logs.png"), full_page=True)

    page.fill("input[name=model]", "fake/other-model")
    page.click("#apply")
    assert [r for r in _rows(page)] and all("fake/other-model" in r for r in _rows(page))
    assert len(_rows(page)) == 1 and "carol" in _rows(page)[0]

    page.goto(f"{gw.url}/ui/logs")
    page.fill("input[name=meta_key]", "team")
    page.fill("input[name=meta_value]", "search")
    page.click("#apply")
    customers = sorted(page.locator("#records td.customer").all_inner_texts())
    assert customers == ["alice", "carol"]
    page.screenshot(path=str(shots / "logs-filtered.png"), full_page=True)

    page.click("#records tbody tr:has-text('alice') a")
    page.wait_for_url(f"{gw.url}/ui/logs/{ids['a']}")
    assert "Hello from a" in page.inner_text("#messages")
    assert "gpt-test" in page.inner_text("#facts") and "team = search" in page.inner_text("#facts")
    page.click("summary:has-text('Full request')")
    assert "Hello from a" in page.inner_text("#full-request")
    page.screenshot(path=str(shots / "detail.png"), full_page=True)

    page.click("nav >> text=Usage")
    page.wait_for_selector("#plot-requests svg circle.point")
    assert page.locator("#plot-requests circle.point").count() >= 2  # requests and errors of this hour
    assert page.locator("#plot-groups polyline").count() == 3  # gpt-test, fake/other-model, the error
    assert page.locator("#plot-latency circle.point").count() >= 1
    assert "5" in page.inner_text("#totals")
    assert "gpt-test" in page.inner_text("#top-model")
    page.screenshot(path=str(shots / "usage.png"), full_page=True)

    page.click("#sign-out")
    page.wait_for_url(f"{gw.url}/ui/login")
    page.goto(f"{gw.url}/ui/logs")
    assert "/ui/login" in page.url
    assert page.dialogs == []


def test_hostile_values_render_as_text(dashboard_gateway, page: Any, shots: Path) -> None:
    gw = dashboard_gateway()
    ids = _make_records(gw)
    _sign_in(page, gw)
    assert XSS_IMG in page.inner_text("#records")
    assert page.locator("#records img").count() == 0
    page.goto(f"{gw.url}/ui/logs/{ids['xss']}")
    text = page.inner_text("#messages")
    assert XSS_SCRIPT in text and XSS_IMG in text
    assert page.locator("main img, main script").count() == 0
    assert XSS_SCRIPT in page.inner_text("#facts")
    page.screenshot(path=str(shots / "detail-xss.png"), full_page=True)
    page.goto(f"{gw.url}/ui/usage?group=customer")
    page.wait_for_selector("#plot-groups svg")
    assert XSS_IMG in page.inner_text("#top-customer")
    assert page.dialogs == []  # no alert() ran anywhere


def test_a_form_posted_without_the_csrf_token_is_refused(dashboard_gateway, page: Any) -> None:
    gw = dashboard_gateway()
    _sign_in(page, gw)
    # The sign-out form with its token removed, submitted by the browser itself (session cookie sent).
    page.eval_on_selector("form.signout input[name=csrf_token]", "e => e.remove()")
    with page.expect_navigation():
        page.click("#sign-out")
    assert "CSRF" in page.inner_text("body")
    page.goto(f"{gw.url}/ui/logs")
    assert page.url.endswith("/ui/logs")  # still signed in


def test_customers_keys_and_cache_pages(dashboard_gateway, page: Any, shots: Path) -> None:
    gw = dashboard_gateway()
    client = gw.openai()
    ada = {"customer_identifier": "ada", "name": "Ada L.", "period_budget": 0.05, "budget_duration": "monthly",
           "markup_percentage": 20, "rate_limit": 60}
    for _ in range(3):
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"customer_params": ada})
    client.chat.completions.create(model="fake/other-model", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"customer_params": {"customer_identifier": XSS_IMG, "name": XSS_SCRIPT}})
    for _ in range(3):  # a miss, then two hits
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "cached"}],
                                       extra_body={"cache_enabled": True, "customer_identifier": "bob"})
    _sign_in(page, gw)

    page.click("nav >> text=Customers")
    page.wait_for_url(f"{gw.url}/ui/customers")
    rows = page.locator("#customers tbody tr").all_inner_texts()
    assert len(rows) == 3
    ada_row = next(r for r in rows if r.startswith("ada"))
    assert "Ada L." in ada_row and "/ monthly" in ada_row and "20%" in ada_row and "60/min" in ada_row
    assert XSS_IMG in page.inner_text("#customers") and XSS_SCRIPT in page.inner_text("#customers")
    assert page.locator("#customers img, main script").count() == 0
    assert page.locator("#customers meter").count() == 1  # ada's period budget, used
    page.screenshot(path=str(shots / "customers.png"), full_page=True)

    page.click("#customers a:text-is('ada')")
    page.wait_for_url(f"{gw.url}/ui/customers/ada")
    assert "Ada L." in page.inner_text("#facts")
    page.wait_for_selector("#plot-requests svg circle.point")
    assert "3" in page.inner_text("#totals") and "gpt-test" in page.inner_text("#top-model")
    page.screenshot(path=str(shots / "customer.png"), full_page=True)

    page.click("nav >> text=Usage")
    page.wait_for_selector("#plot-cache svg circle.point")  # the hit rate of this hour: 2 of 7
    assert "28.6%" in page.inner_text("#cache-rate")
    assert "1" in page.inner_text("#cache-entries")

    page.click("nav >> text=Keys")
    page.wait_for_url(f"{gw.url}/ui/keys")
    page.fill("#create-key input[name=name]", XSS_SCRIPT)
    page.click("#create")
    plain = page.inner_text("#new-key").strip()
    assert plain.startswith("rsp_")
    assert gw.openai(api_key=plain).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]).choices
    row = page.locator("#keys tr", has_text="database")
    assert XSS_SCRIPT in row.inner_text() and "active" in row.inner_text()
    page.screenshot(path=str(shots / "keys.png"), full_page=True)
    page.goto(f"{gw.url}/ui/keys")  # the key is shown once: not in the list
    assert plain not in page.content()
    with page.expect_navigation():
        page.click("#keys tr:has-text('database') form.revoke button")
    assert "revoked" in page.inner_text("#revoked") and XSS_SCRIPT in page.inner_text("#revoked")
    assert "revoked" in page.locator("#keys tr", has_text="database").inner_text()
    page.click("text=hide revoked keys")
    assert page.locator("#keys tr", has_text="database").count() == 0
    assert page.dialogs == []


def test_sections_of_stopped_plugins_are_not_in_the_nav(dashboard_gateway, page: Any) -> None:
    gw = dashboard_gateway('[plugins]\ndisabled = ["limits", "cache", "prompts"]\n')
    _sign_in(page, gw)
    assert page.locator("nav a").all_inner_texts() == ["Logs", "Usage", "Keys"]
    page.goto(f"{gw.url}/ui/usage")
    page.wait_for_selector("#plot-requests svg")
    assert page.locator("#plot-cache").count() == 0
    page.goto(f"{gw.url}/ui/customers")
    assert "enable the limits plugin" in page.inner_text("main")
