"""GET /admin/compliance against a running gateway: each format with its content type, the admin key required, and
a bad language or format refused naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from harness import ADMIN_KEY, AUDIT_KEY, Gateway
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.toolkit.backup import create_backup


def test_the_report_in_each_format_and_language(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway({"auth_failure_limit": 20}, screening={"enabled": True})  # the harness screens nothing
    create_backup(gateway.settings, gateway.database, audit_key=AUDIT_KEY.encode())
    data = gateway.call("GET", "/admin/compliance", params={"format": "json"})
    assert len(data["controls"]) == 10 and data["summary"]["fail"] == 0
    audit = next(c for c in data["controls"] if c["id"] == "security_audit")
    assert audit["verdict"] == "pass" and audit["evidence"][0]["value"]["en"] == "3 rows, chain intact"
    html = gateway.admin.get("/admin/compliance", params={"lang": "zh"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "身份鉴别" in html.text and "数据备份恢复" in html.text
    pdf = gateway.admin.get("/admin/compliance", params={"lang": "zh", "format": "pdf"})
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert b"STSong-Light" in pdf.content and pdf.headers["content-disposition"].endswith('.zh.pdf"')


def test_the_report_needs_the_admin_key_and_refuses_bad_options(gateway: Gateway) -> None:
    # the harness allows 10,000 failed authentications a minute (the report says that is too many), screens
    # nothing (malicious input and personal information fail), and has no backup yet
    data = gateway.call("GET", "/admin/compliance", params={"format": "json"})
    assert [c["id"] for c in data["controls"] if c["verdict"] == "fail"] == [
        "identification", "intrusion_prevention", "malicious_input", "backup_recovery", "personal_information"]
    anonymous = httpx.get(gateway.url + "/admin/compliance")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"]
    for params, field in (({"lang": "fr"}, "lang"), ({"format": "docx"}, "format")):
        refused = gateway.admin.get("/admin/compliance", params=params)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == field and error["type"] == "invalid_request_error" and field in error["message"]


def test_the_cli_report_probes_a_running_gateway(gateway: Gateway, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name, value in (("HOME", str(gateway.settings.home)), ("GATEWAY__DB_URL", gateway.settings.database_url()),
                        ("GATEWAY__ADMIN_KEY", ADMIN_KEY), ("GATEWAY__AUDIT_KEY", AUDIT_KEY)):
        monkeypatch.setenv(f"MOECLOUD_{name}", value)
    result = CliRunner().invoke(app, ["compliance", "report", "--json", "--lang", "en", "--gateway-url", gateway.url])
    assert result.exit_code == 0, result.output
    platform = json.loads(result.output)["platform"]
    assert platform["gateway_url"] == gateway.url and platform["gateway_health"] == "200"
