"""The customers, keys and cache sections over HTTP: each shows only while its plugin runs, reads only
the signed-in tenant, escapes what requests put in it, and its forms need the session's CSRF token.

The browser tests (test_browser.py) show the same pages in Chromium."""

from __future__ import annotations

import re

import httpx2
import pytest
from dashboard_kit import ADMIN_KEY, OTHER_ADMIN_KEY, csrf_of, sign_in

from respan_gateway import hookspecs

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
HI = [{"role": "user", "content": "hi"}]


def _nav(html: str) -> list[str]:
    return re.findall(r'data-section="([^"]+)"', html)


def _keys_api(gw, method: str, path: str = "", key: str = ADMIN_KEY, **kwargs) -> httpx2.Response:  # noqa: ANN001, ANN003
    return httpx2.request(method, f"{gw.url}/api/keys/{path}", headers={"authorization": f"Bearer {key}"},
                          timeout=10, **kwargs)


def _works(gw, key: str) -> bool:  # noqa: ANN001
    answer = httpx2.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                         json={"model": "gpt-test", "messages": HI}, timeout=10)
    return answer.status_code == 200


def test_each_section_shows_while_its_plugin_runs(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    client = sign_in(gw)
    page = client.get("/ui/usage").text
    assert _nav(page) == ["logs", "usage", "prompts", "customers", "keys"]
    assert 'id="plot-cache"' in page and 'id="cache-entries"' in page  # the cache plugin runs (memory backend)
    assert client.get("/ui/customers").status_code == 200 and client.get("/ui/keys").status_code == 200


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_without_limits_and_cache_their_sections_are_gone(dashboard_gateway) -> None:
    gw = dashboard_gateway('[plugins]\ndisabled = ["limits", "cache", "prompts"]\n')
    gw.openai().chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_identifier": "alice"})
    client = sign_in(gw)
    page = client.get("/ui/usage").text
    assert _nav(page) == ["logs", "usage", "keys"]
    assert 'id="plot-cache"' not in page and 'id="cache-entries"' not in page and 'id="cache-rate"' not in page
    customers = client.get("/ui/customers")
    assert customers.status_code == 503 and "enable the limits plugin" in customers.text
    assert client.get("/ui/customers/alice").status_code == 503


def test_without_auth_nobody_signs_in_so_no_keys_page(dashboard_gateway) -> None:
    gw = dashboard_gateway('[plugins]\ndisabled = ["auth"]\n')
    with httpx2.Client(base_url=gw.url) as client:
        token = csrf_of(client.get("/ui/login").text)
        answer = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf_token": token})
        assert answer.status_code == 403 and "not an admin key" in answer.text
        assert client.get("/ui/keys").status_code == 303  # to the sign-in


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_customers_list_and_a_customers_usage(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    client = gw.openai()
    params = {"customer_identifier": "ada", "name": "Ada L.", "email": "ada@example.com", "period_budget": 5.0,
              "budget_duration": "weekly", "markup_percentage": 10, "rate_limit": 100}
    for _ in range(3):
        client.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_params": params})
    client.chat.completions.create(model="fake/other-model", messages=HI, extra_body={"customer_identifier": "bob"})
    globex = gw.openai(api_key="sk-globex-app")
    globex.chat.completions.create(model="gpt-test", messages=HI, extra_body={"customer_identifier": "globex-customer"})
    session = sign_in(gw)
    page = session.get("/ui/customers").text
    assert "2 customers" in page and "globex-customer" not in page
    row = re.search(r'<tr>\s*<td class="customer"><a href="/ui/customers/ada">ada</a>(.*?)</tr>', page, re.S)[1]
    assert "Ada L." in row and "$5 / weekly" in row and "10%" in row and "100/min" in row
    assert re.search(r"<td>3</td>", row)  # requests
    detail = session.get("/ui/customers/ada?range=24h")
    assert detail.status_code == 200
    assert "<li><b>3</b> requests</li>" in detail.text  # the logs' usage filtered to this customer
    assert 'id="plot-requests"' in detail.text and "gpt-test" in detail.text and "fake/other-model" not in detail.text
    assert session.get("/ui/customers/nobody").status_code == 404
    assert sign_in(gw, OTHER_ADMIN_KEY).get("/ui/customers/ada").status_code == 404  # another tenant's


def test_customer_and_key_names_are_escaped(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    gw.openai().chat.completions.create(model="gpt-test", messages=HI, extra_body={
        "customer_params": {"customer_identifier": XSS_IMG, "name": XSS_SCRIPT, "email": XSS_IMG}})
    assert _keys_api(gw, "POST", json={"name": XSS_SCRIPT + XSS_IMG}).status_code == 201
    session = sign_in(gw)
    customers = session.get("/ui/customers").text
    keys = session.get("/ui/keys").text
    link = re.search(r'href="(/ui/customers/[^"]+)"', customers)[1]
    detail = session.get(link)
    assert detail.status_code == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text
    for html in (customers, keys, detail.text):
        assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in customers and "&lt;script&gt;alert(1)&lt;/script&gt;" in keys


def test_key_forms_need_the_csrf_token_and_work_with_it(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    session = sign_in(gw)
    token = csrf_of(session.get("/ui/keys").text)
    refused = session.post("/ui/keys", data={"name": "from-ui"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert session.post("/ui/keys", data={"name": "from-ui", "csrf_token": "x" + token}).status_code == 403
    assert "from-ui" not in session.get("/ui/keys").text  # nothing was created

    created = session.post("/ui/keys", data={"name": "from-ui", "environment": "test", "csrf_token": token})
    assert created.status_code == 201
    plain = re.search(r'<pre class="json" id="new-key">([^<]+)</pre>', created.text)[1]
    assert created.headers["cache-control"] == "no-store" and _works(gw, plain)
    listed = session.get("/ui/keys").text
    assert plain not in listed and "from-ui" in listed  # shown once: never in the list
    key_id = re.search(r'<tr class="status-active" data-key="([^"]+)">\s*<td class="name">from-ui</td>', listed)[1]
    record = _keys_api(gw, "GET", f"{key_id}/").json()
    assert record["environment"] == "test" and record["admin"] is False

    assert session.post(f"/ui/keys/{key_id}/revoke", data={}).status_code == 403
    assert _works(gw, plain)
    other = sign_in(gw, OTHER_ADMIN_KEY)  # another tenant's admin: not its key
    other_token = csrf_of(other.get("/ui/keys").text)
    assert other.post(f"/ui/keys/{key_id}/revoke", data={"csrf_token": other_token}).status_code == 404
    assert _works(gw, plain)
    revoked = session.post(f"/ui/keys/{key_id}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 303 and revoked.headers["location"] == f"/ui/keys?revoked=1&done={key_id}"
    assert not _works(gw, plain)
    assert _keys_api(gw, "GET", f"{key_id}/").json()["status"] == "revoked"
    after = session.get(revoked.headers["location"]).text
    assert re.search(rf'id="revoked" role="status">Key <b>from-ui</b> revoked', after)
    assert f'<tr class="status-revoked" data-key="{key_id}">' in after
    assert "from-ui" not in session.get("/ui/keys").text  # revoked keys are hidden unless asked


def test_a_bad_expiry_is_refused_with_the_form_kept(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    session = sign_in(gw)
    token = csrf_of(session.get("/ui/keys").text)
    answer = session.post("/ui/keys", data={"name": "late", "expires": "2001-01-01T00:00", "csrf_token": token})
    assert answer.status_code == 400 and "must be in the future" in answer.text and 'value="late"' in answer.text
    assert _keys_api(gw, "GET").json()["count"] == 0


def test_the_keys_page_lists_config_and_database_keys_with_their_usage(dashboard_gateway) -> None:
    gw = dashboard_gateway()
    made = _keys_api(gw, "POST", json={"name": "app", "limits": {"requests_per_minute": 60}}).json()
    for _ in range(2):
        assert _works(gw, made["key"])
    page = sign_in(gw).get("/ui/keys").text
    rows = dict(re.findall(r'data-key="([^"]+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {"test", "ops", made["id"]}  # acme's config keys and its database key; not globex's
    assert "config" in rows["ops"] and "admin" in rows["ops"] and "Revoke" not in rows["ops"]
    assert made["prefix"] in rows[made["id"]] and "requests_per_minute 60" in rows[made["id"]]
    assert "<td>2</td>" in rows[made["id"]] and "Revoke" in rows[made["id"]]


@pytest.mark.skipif(not hasattr(hookspecs, "PromptCatalog"),
                    reason="the prompts section waits for the prompts plugin's PromptCatalog service (hookspecs.py)")
def test_the_prompts_section_lists_prompts_and_their_versions(dashboard_gateway, tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "greeter.toml").write_text(
        f'name = "{XSS_SCRIPT}"\n'
        '[[versions]]\nmodel = "gpt-test"\nmessages = [{ role = "system", content = "Be brief." }]\n'
        f'[[versions]]\nmodel = "gpt-test"\nmessages = [{{ role = "user", content = "{XSS_IMG.replace(chr(34), "")} hi {{{{ who }}}}" }}]\n')
    gw = dashboard_gateway(f'[prompts]\nfolder = "{folder}"\n')
    session = sign_in(gw)
    page = session.get("/ui/prompts").text
    assert "prompts" in _nav(page) and 'data-prompt="greeter"' in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    detail = session.get("/ui/prompts/greeter").text
    assert detail.count('class="version') == 2 and detail.count("<span class=\"tag\">deployed</span>") == 1
    assert "Be brief." in detail and "<img src=x" not in detail
    assert session.get("/ui/prompts/nope").status_code == 404
    assert 'data-prompt="greeter"' in sign_in(gw, OTHER_ADMIN_KEY).get("/ui/prompts").text  # a shared file prompt
