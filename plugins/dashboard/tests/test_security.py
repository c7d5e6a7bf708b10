"""The dashboard's security over HTTP: sessions, CSRF, headers, tenants, escaping, removal.

The browser tests (test_browser.py) show the same things in Chromium; these run without a browser.
"""

from __future__ import annotations

import re

import httpx2
import pytest
from dashboard_kit import ADMIN_KEY, OTHER_ADMIN_KEY, csrf_of, sign_in

from respan_gateway.testing import TEST_KEY

XSS = ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>']


def test_every_page_without_a_session_redirects_to_sign_in(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    with httpx2.Client(base_url=gw.url) as client:
        for path in ("/ui/", "/ui/logs?model=x", "/ui/usage", "/ui/logs/abc"):
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/ui/login?next=%2Fui%2F"), answer.headers["location"]


def test_sign_in_sets_a_signed_httponly_strict_cookie_with_expiry(dashboard_gateway) -> None:
    gw = dashboard_gateway("[dashboard]\nsession_ttl = 600\n")
    with httpx2.Client(base_url=gw.url) as client:
        token = csrf_of(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": token, "next": "/ui/usage"})
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/usage"
        cookie = answer.headers["set-cookie"].lower()
        assert "respan_ui_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert "max-age=600" in cookie and "path=/ui" in cookie
        assert client.get("/ui/logs").status_code == 200
        # A forged (unsigned) cookie is no session.
        value = client.cookies["respan_ui_session"]
    for forged in (value[:-4] + "AAAA", value.replace(".", "x", 1)):
        with httpx2.Client(base_url=gw.url, cookies={"respan_ui_session": forged}) as other:
            assert other.get("/ui/logs").status_code == 303


@pytest.mark.parametrize("key, message", [
    ("sk-nope", "invalid or expired"),
    (TEST_KEY, "not an admin key"),
])
def test_only_an_admin_key_signs_in(dashboard_gateway, key: str, message: str) -> None:
    gw = dashboard_gateway()
    with httpx2.Client(base_url=gw.url) as client:
        token = csrf_of(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"key": key, "csrf_token": token})
        assert answer.status_code in (401, 403)
        assert message in answer.text and "respan_ui_session" not in answer.headers.get("set-cookie", "")
        assert key not in answer.text  # the key typed is never echoed back


def test_sign_in_without_its_csrf_token_is_refused(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    with httpx2.Client(base_url=gw.url) as client:
        client.get("/ui/login")
        answer = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": "forged"})
        assert answer.status_code == 403 and "respan_ui_session" not in answer.headers.get("set-cookie", "")


def test_sign_out_without_the_csrf_token_is_refused_and_with_it_ends_the_session(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    client = sign_in(gw)
    page = client.get("/ui/logs")
    assert client.post("/ui/logout", data={}).status_code == 403
    assert client.post("/ui/logout", data={"csrf_token": "x" + csrf_of(page.text)}).status_code == 403
    assert client.get("/ui/logs").status_code == 200  # still signed in
    answer = client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert client.get("/ui/logs").status_code == 303


def test_pages_send_a_strict_content_security_policy(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    client = sign_in(gw)
    for path in ("/ui/login", "/ui/logs", "/ui/usage"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    page = client.get("/ui/usage").text
    # No inline script: every <script> either loads a file of the dashboard or is a JSON data block.
    for tag in re.findall(r"<script[^>]*>", page):
        assert 'src="/ui/static/' in tag or 'type="application/json"' in tag, tag
    assert client.get("/ui/static/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_sign_in_redirects_only_inside_the_dashboard(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    with httpx2.Client(base_url=gw.url) as client:
        token = csrf_of(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": token, "next": "//evil.example/ui/"})
        assert answer.headers["location"] == "/ui/"


def test_a_tenants_admin_sees_only_that_tenant(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    acme = gw.openai()
    globex = gw.openai(api_key="sk-globex-app")
    acme_id = acme.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], extra_body={"customer_identifier": "acme-customer"}
    ).headers["x-respan-log-id"]
    globex.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"customer_identifier": "globex-customer"})
    acme_page = sign_in(gw).get("/ui/logs").text
    globex_client = sign_in(gw, OTHER_ADMIN_KEY)
    globex_page = globex_client.get("/ui/logs").text
    assert "acme-customer" in acme_page and "globex-customer" not in acme_page
    assert "globex-customer" in globex_page and "acme-customer" not in globex_page
    assert globex_client.get(f"/ui/logs/{acme_id}").status_code == 404
    usage = globex_client.get("/ui/usage").text
    assert "acme-customer" not in usage and "globex-customer" in usage


def test_values_from_requests_are_escaped(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    client = gw.openai()
    log_id = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": XSS[0] + XSS[1]}],
        extra_body={"customer_identifier": XSS[1], "metadata": {"note": XSS[0]}},
    ).headers["x-respan-log-id"]
    session = sign_in(gw)
    for page in (session.get("/ui/logs").text, session.get(f"/ui/logs/{log_id}").text, session.get("/ui/usage").text):
        assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in session.get(f"/ui/logs/{log_id}").text


def test_without_logging_the_pages_say_so(dashboard_gateway) -> None:
    gw = dashboard_gateway('[plugins]\ndisabled = ["logging", "metrics"]\n')
    page = sign_in(gw).get("/ui/logs")
    assert page.status_code == 503 and "enable the logging plugin" in page.text
    assert 'data-section="logs"' not in page.text  # no nav entry for a section that cannot show


def test_the_gateway_runs_without_the_dashboard(gateway_factory) -> None:
    gw = gateway_factory('[plugins]\ndisabled = ["dashboard"]\n')
    assert gw.openai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}]).choices
    with httpx2.Client(base_url=gw.url) as client:
        assert client.get("/ui/login").status_code == 404
