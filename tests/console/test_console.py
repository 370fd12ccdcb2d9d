"""The issue's six scenarios, in a real browser, plus the language switch and the page's security headers."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx
from browser import ADMIN_KEY, DEPLOYMENT, MODEL, READY_SECONDS, Platform, screenshot, sign_in


def test_a_wrong_key_is_refused_and_no_session_is_made(open_page: Any, platform: Platform) -> None:
    page = open_page()
    page.fill("#sign-in-key", "sk-this-is-not-a-key")
    page.click("#sign-in button[type=submit]")
    refusal = page.locator("#sign-in .notice.error")
    refusal.wait_for()
    assert "refused" in refusal.inner_text()
    assert page.locator("#sign-out").count() == 0
    assert [c for c in page.context.cookies() if c["name"] == "moecloud_session"] == []
    assert page.evaluate("fetch('/admin/gallery').then(r => r.status)") == 401


def test_admin_scales_to_a_second_replica_from_the_gallery_and_sees_it_ready(
    open_page: Any, platform: Platform
) -> None:
    page = open_page()
    sign_in(page, ADMIN_KEY)
    row = page.locator(f"tr[data-deployment={DEPLOYMENT}]")
    row.locator("[data-status=ready]").wait_for()
    card = page.locator(f"section[data-model={MODEL}]")
    assert "DeepseekV2ForCausalLM" in card.inner_text() or "Deepseek" in card.inner_text()
    row.locator("input[name=replicas]").fill("2")
    row.locator("[data-action=scale]").click()
    page.locator(f"tr[data-deployment={DEPLOYMENT}] [data-status=scaling]").wait_for()
    page.locator(f"tr[data-deployment={DEPLOYMENT}] td.timing", has_text=re.compile(r"ready in \d+\.\d s")).wait_for(
        timeout=READY_SECONDS * 1000)
    assert page.locator(f"tr[data-deployment={DEPLOYMENT}] .dot.ready").count() == 2
    assert platform.ready_replicas() == 2
    screenshot(page, "gallery")


def test_admin_creates_a_key_shown_once_and_it_works_with_the_openai_sdk(open_page: Any, platform: Platform) -> None:
    platform.call("POST", "/admin/tenants", json={"name": "keyed", "trial_credit": "3"})
    page = open_page()
    sign_in(page, ADMIN_KEY, to="keys")
    form = page.locator("#new-key-form")
    form.locator("select[name=tenant]").select_option("keyed")
    form.locator("input[name=name]").fill("from-the-console")
    form.locator("input[name=models]").fill(MODEL)
    form.locator("input[name=rpm]").fill("600")
    page.click("#create-key")
    key = page.locator("#new-key").inner_text().strip()
    page.click("#copy-key")
    assert page.evaluate("navigator.clipboard.readText()") == key
    listed = page.locator("#keys tbody tr", has_text="from-the-console")
    assert "keyed" in listed.inner_text() and "600" in listed.inner_text()
    assert key not in page.locator("#keys").inner_text()  # the table shows the prefix, never the secret

    reply = platform.client(key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert reply.usage.completion_tokens == 4 and reply.choices[0].message.content is not None
    screenshot(page, "keys")

    page.once("dialog", lambda dialog: dialog.accept())
    listed.locator("[data-action=revoke]").click()
    page.locator("#keys tbody tr[data-state=revoked]", has_text="from-the-console").wait_for()
    refused = httpx.post(platform.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401


def test_a_tenant_chats_in_the_playground_sees_it_stream_then_the_usage_chart_and_balance_change(
    open_page: Any, platform: Platform
) -> None:
    key = platform.tenant_with_key("chatty")
    page = open_page()
    sign_in(page, key)
    page.locator("#usage-totals").wait_for()  # a tenant lands on its usage page
    before = page.locator("[data-stat=balance] .value").inner_text()
    assert before.startswith("5") and platform.balance("chatty") == Decimal(5)
    assert page.locator("#tokens-per-day rect[data-value]:not([data-value='0'])").count() == 0

    page.click("nav a[data-page=playground]")
    page.locator(f"#playground-model option[value={MODEL}]").wait_for(state="attached")
    page.fill("#playground-system", "You answer briefly.")
    page.fill("#param-max_tokens", "48")
    page.fill("#param-temperature", "0")
    page.fill("#playground-input", "Tell me about mixture-of-experts models.")
    code = page.locator("#playground-code").inner_text()
    assert "Authorization: Bearer $MOECLOUD_API_KEY" in code and '"max_tokens": 48' in code
    page.click("[data-code=python]")
    assert "client.chat.completions.create(" in page.locator("#playground-code").inner_text()
    page.evaluate("""() => {
        window.seen = new Set();
        new MutationObserver(() => {
            const answer = document.querySelector('.message.assistant .content');
            if (answer) window.seen.add(answer.textContent);
        }).observe(document.getElementById('thread'), {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#playground-send")
    page.locator(".message.assistant[data-finish]").wait_for()
    status = page.locator("#playground-status").inner_text()
    assert re.search(r"Done: \d+ prompt \+ 48 completion tokens \(length\)", status), status
    answer = page.locator(".message.assistant .content").inner_text()
    partial = page.evaluate("[...window.seen].filter(text => text.length > 0)")
    assert len(partial) >= 2 and all(answer.startswith(text) for text in partial)  # it grew, piece by piece
    screenshot(page, "playground")

    page.click("nav a[data-page=usage]")
    page.locator("#usage-totals").wait_for()
    after = Decimal(page.locator("[data-stat=balance] .value").inner_text().split()[0])
    assert after < Decimal(5) and after == platform.balance("chatty")
    assert page.locator("[data-stat=completion_tokens] .value").inner_text() == "48"
    bars = page.locator("#tokens-per-day rect[data-series=completion]:not([data-value='0'])")
    assert bars.count() == 1 and bars.get_attribute("data-value") == "48"
    assert page.locator("#by-model rect[data-label='tiny-moe']").count() == 1
    csv = page.evaluate("fetch(document.getElementById('export-csv').getAttribute('href')).then(r => r.text())")
    assert csv.splitlines()[0].startswith("day,tenant,key,model") and ",chatty," in csv
    screenshot(page, "usage")


def test_an_admin_chats_as_a_tenant_with_a_short_lived_key_made_in_the_playground(
    open_page: Any, platform: Platform
) -> None:
    platform.call("POST", "/admin/tenants", json={"name": "guest", "trial_credit": "2"})
    page = open_page()
    sign_in(page, ADMIN_KEY, to="playground")
    assert "Paste a tenant's API key" in page.locator("#playground-status").inner_text()
    page.select_option("#playground-tenant", "guest")
    page.click("#playground-mint")
    page.locator(f"#playground-model option[value={MODEL}]").wait_for(state="attached")
    page.fill("#param-max_tokens", "5")
    page.fill("#playground-input", "hello")
    page.click("#playground-send")
    page.locator(".message.assistant[data-finish]").wait_for()
    assert "5 completion tokens" in page.locator("#playground-status").inner_text()
    minted = [k for k in platform.call("GET", "/admin/keys", params={"tenant": "guest"}) if k["name"] == "playground"]
    assert len(minted) == 1 and minted[0]["expires_at"] is not None
    assert platform.balance("guest") < Decimal(2)  # the chat was billed to the tenant, not to nobody


def test_a_tenant_sees_only_its_own_keys_and_usage(open_page: Any, platform: Platform) -> None:
    mine, theirs = platform.tenant_with_key("alpha"), platform.tenant_with_key("beta")
    for key in (mine, theirs):
        platform.client(key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                     max_tokens=2)
    platform.call("POST", "/admin/keys", json={"tenant": "beta", "name": "beta-secret-project"})
    page = open_page()
    sign_in(page, mine)
    assert page.locator("#who").inner_text().endswith("alpha")
    assert [a.get_attribute("data-page") for a in page.locator("nav a").all()] == ["keys", "usage", "playground"]
    by_key = page.locator("#by-key").text_content()
    assert "alpha" in by_key and "beta" not in by_key
    page.click("nav a[data-page=keys]")
    keys = page.locator("#keys tbody")
    keys.locator("tr").first.wait_for()
    assert "alpha-key" in keys.inner_text() and "beta" not in keys.inner_text()

    page.goto(platform.url + "/console#/gallery")  # an admin page: the tenant is sent home instead
    page.locator("#usage-totals").wait_for()
    statuses = page.evaluate("""async () => Promise.all(
        ['/admin/gallery', '/admin/keys', '/admin/usage/summary', '/v1/usage/summary?tenant=beta'].map(
            path => fetch(path).then(r => r.status)))""")
    assert statuses == [401, 401, 401, 400]

    page.click("#sign-out")
    page.locator("#sign-in").wait_for()
    assert page.evaluate("fetch('/v1/account').then(r => r.status)") == 401


def test_operations_show_expert_load_and_the_verified_audit_log(open_page: Any, platform: Platform) -> None:
    key = platform.tenant_with_key("busy")
    platform.client(key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "load"}],
                                                 max_tokens=8)
    page = open_page()
    sign_in(page, ADMIN_KEY, to="operations")
    page.locator("#audit-verify[data-ok=true]").wait_for()
    assert page.locator("svg.heatmap").count() >= 1
    assert page.locator("svg.heatmap rect.cell:not([data-value='0'])").count() > 0
    assert int(page.locator("[data-stat=requests] .value").inner_text()) >= 1
    assert page.locator("#audit tbody tr", has_text="console.sign_in").count() >= 1
    rows = int(page.locator("#audit-verify").inner_text().split(": ")[1].split()[0])
    platform.call("POST", "/admin/tenants", json={"name": "audited-later"})  # one more audit row
    page.click("#audit-verify-again")
    page.wait_for_function(  # at least the new row (the autoscaler may add its own meanwhile), still intact
        "rows => { const text = document.getElementById('audit-verify').textContent;"
        " return /rows intact/.test(text) && parseInt(text.split(': ')[1], 10) > rows; }", arg=rows)
    screenshot(page, "operations")


def test_admin_adds_credit_and_sets_a_tenants_limits(open_page: Any, platform: Platform) -> None:
    platform.call("POST", "/admin/tenants", json={"name": "funded", "trial_credit": "1"})
    page = open_page()
    sign_in(page, ADMIN_KEY, to="tenants")
    row = page.locator("#tenants tr[data-tenant=funded]")
    row.locator("[data-form=credit] input[name=amount]").fill("2.5")
    row.locator("[data-form=credit] button").click()
    page.locator(".notice.ok", has_text="Added 2.5 to funded").wait_for()
    assert platform.balance("funded") == Decimal("3.5")
    row = page.locator("#tenants tr[data-tenant=funded]")
    row.locator("[data-form=limits] input[name=rpm]").fill("42")
    row.locator("[data-form=limits] input[name=weight]").fill("3")
    row.locator("[data-form=limits] button").click()
    page.locator(".notice.ok", has_text="Saved the limits of funded").wait_for()
    tenant = {t["name"]: t for t in platform.call("GET", "/admin/tenants")}["funded"]
    assert (tenant["rpm"], tenant["weight"]) == (42, 3)


def test_chinese_first_when_the_browser_asks_and_the_switch_is_remembered(open_page: Any) -> None:
    page = open_page(locale="zh-CN")
    assert page.locator("#sign-in h1").inner_text() == "登录 moecloud"
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.select_option("#language", "en")
    assert page.locator("#sign-in h1").inner_text() == "Sign in to moecloud"
    page.reload()
    assert page.locator("#sign-in h1").inner_text() == "Sign in to moecloud"


def test_the_console_is_served_with_a_strict_policy_and_the_old_addresses_lead_there(platform: Platform) -> None:
    for old in ("/", "/ui"):
        response = httpx.get(platform.url + old)
        assert response.status_code == 307 and response.headers["location"] == "/console"
    page = httpx.get(platform.url + "/console")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "<script" in page.text and "<script>" not in page.text and "style=" not in page.text  # nothing inline
    script = httpx.get(platform.url + "/console/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript") and "import" in script.text
    for hostile in ("..%2Fapp.py", "../../gateway/app.py", "app.py", ".hidden.js", "missing.js"):
        assert httpx.get(platform.url + "/console/static/" + hostile).status_code == 404
