"""The compliance report on a fresh platform database: which controls pass and fail as the settings and the stored
data change, and its HTML, PDF and JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from databases import database_url  # noqa: F401  (the sqlite/postgresql fixture)
from sqlalchemy import update
from typer.testing import CliRunner

from moecloud.cli import app
from moecloud.config import Settings, load_settings
from moecloud.gateway.admin.schemas import KeyIn, TenantIn
from moecloud.gateway.admin.service import Admin
from moecloud.secret_files import SecretFiles, write_secret
from moecloud.security import Policy
from moecloud.store import Database, retention
from moecloud.store.tables import ApiKey, AuditEntry, Tenant, UsageRecord
from moecloud.store.types import utcnow
from moecloud.toolkit.backup import create_backup
from moecloud.toolkit.compliance import Report, collect, judge, render_html, render_pdf, write_report
from moecloud.toolkit.compliance.facts import gather

ADMIN_KEY = "mc-admin-" + secrets.token_urlsafe(32)
AUDIT_KEY = secrets.token_urlsafe(32)
FRESH = {"identification": "pass", "access_control": "pass", "security_audit": "pass",
         "intrusion_prevention": "pass", "malicious_input": "pass", "data_integrity": "pass",
         "data_confidentiality": "pass", "backup_recovery": "fail", "residual_information": "pass",
         "personal_information": "pass"}


@dataclasses.dataclass
class Platform:
    home: Path
    database: Database
    key_id: str

    def settings(self, **sections: dict[str, Any]) -> Settings:
        gateway = {"db_url": self.database.url, "admin_key": ADMIN_KEY, "audit_key": AUDIT_KEY,
                   **sections.pop("gateway", {})}
        return load_settings(home=self.home, gateway=gateway, **sections)

    def report(self, **sections: dict[str, Any]) -> Report:
        return collect(self.settings(**sections), self.database, audit_key=AUDIT_KEY.encode())


@pytest.fixture
def platform(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    database = Database.open(database_url)
    settings = load_settings(home=tmp_path, gateway={"db_url": database_url, "admin_key": ADMIN_KEY,
                                                     "audit_key": AUDIT_KEY})
    admin = Admin(database, settings, AUDIT_KEY.encode(), actor="test")
    admin.create_tenant(TenantIn(name="acme"))
    key = admin.create_key(KeyIn(tenant="acme", name="ci", models=["m"]))
    yield Platform(tmp_path, database, key.id)
    database.dispose()


def verdicts(report: Report) -> dict[str, str]:
    return {control.id: control.verdict for control in report.controls}


def control(report: Report, control_id: str):  # type: ignore[no-untyped-def]
    return next(c for c in report.controls if c.id == control_id)


def test_a_fresh_platform_passes_every_control_it_can_check(platform: Platform) -> None:
    report = platform.report()
    assert verdicts(report) == FRESH  # every control but backup, of which there is none yet
    assert control(report, "backup_recovery").evidence[0].value.en.startswith("no readable archive")  # type: ignore
    identification = control(report, "identification")
    assert [item.ok for item in identification.evidence] == [True, True, True]
    assert "1 keys, 0 not stored" in identification.evidence[0].value.en  # type: ignore[union-attr]
    assert "bits" in identification.evidence[1].value.en  # type: ignore[union-attr]
    audit = control(report, "security_audit").evidence[0].value
    assert audit.en == "2 rows, chain intact" and audit.zh == "2 行，链完整"  # type: ignore[union-attr]
    measured = [item for item in control(report, "malicious_input").evidence if "held-out" in item.what.en]
    assert [item.what.en[-2:] for item in measured] == ["en", "zh"] and all(item.ok for item in measured)


def test_backup_recovery_judges_the_newest_archive_and_restores_it(platform: Platform) -> None:
    settings = platform.settings()
    manifest = create_backup(settings, platform.database, audit_key=AUDIT_KEY.encode())
    backed_up = control(platform.report(), "backup_recovery")
    assert backed_up.verdict == "pass"
    newest, restored = backed_up.evidence
    assert str(manifest.path) in newest.value.en and f"{manifest.rows} rows" in newest.value.en  # type: ignore
    assert restored.ok and "audit chain intact" in restored.value.en  # type: ignore[union-attr]
    stale = control(platform.report(backup={"max_age_hours": 1e-6}), "backup_recovery")
    assert stale.verdict == "fail" and [item.ok for item in stale.evidence] == [False, True]
    assert manifest.path is not None
    archive = manifest.path.read_bytes()
    manifest.path.write_bytes(archive[:len(archive) * 9 // 10])  # cut short: the report says so, and does not crash
    broken = control(platform.report(), "backup_recovery")
    assert broken.verdict == "fail"
    assert broken.evidence[0].value.en.startswith("no readable archive in ")  # type: ignore[union-attr]


def test_screening_off_fails_malicious_input_with_its_fix(platform: Platform) -> None:
    failed = control(platform.report(screening={"enabled": False}), "malicious_input")
    assert failed.verdict == "fail"
    assert failed.fix is not None and "screening.enabled" in failed.fix.en and "screening.enabled" in failed.fix.zh


def test_a_tampered_audit_row_fails_security_audit_and_integrity(platform: Platform) -> None:
    with platform.database.write() as session:
        session.execute(update(AuditEntry).where(AuditEntry.id == 1).values(target="mallory"))
    report = platform.report()
    assert verdicts(report)["security_audit"] == verdicts(report)["data_integrity"] == "fail"
    chain = control(report, "security_audit").evidence[0]
    assert "audit row 1: edited" in chain.value.en and chain.fix is not None  # type: ignore[union-attr]


def test_audit_kept_forever_fails_residual_information_only(platform: Platform) -> None:
    report = platform.report(retention={"audit_days": None})
    assert verdicts(report)["residual_information"] == "fail"
    assert verdicts(report)["security_audit"] == "pass"
    assert "retention.audit_days" in control(report, "residual_information").fix.en  # type: ignore[union-attr]


def test_usage_past_its_retention_fails_residual_information(platform: Platform) -> None:
    with platform.database.write() as session:
        tenant_id = session.query(Tenant.id).filter_by(name="acme").scalar()
        key_id = session.query(ApiKey.id).filter_by(public_id=platform.key_id).scalar()
        old = utcnow() - timedelta(days=40)
        session.add(UsageRecord(request_id="r-old", tenant_id=tenant_id, key_id=key_id, model="m", prompt_tokens=1,
                                cached_tokens=0, completion_tokens=1, latency_ms=1, status="ok", cost=Decimal(0),
                                day=old.date().isoformat(), created_at=old))
    assert verdicts(platform.report(retention={"usage_days": 60}))["residual_information"] == "pass"
    failed = control(platform.report(retention={"usage_days": 30}), "residual_information")
    assert failed.verdict == "fail" and "purge" in failed.fix.en  # type: ignore[union-attr]


def test_purged_audit_rows_leave_a_verified_chain_and_the_anchor_is_shown(platform: Platform) -> None:
    settings = platform.settings()
    # as if a year and more had passed: the fixture's two audit rows are past retention.audit_days (365)
    purged = retention.purge(platform.database, settings.retention, AUDIT_KEY.encode(),
                             now=utcnow() + timedelta(days=400))
    assert purged.audit_deleted == 2
    report = platform.report()
    assert verdicts(report)["security_audit"] == verdicts(report)["data_integrity"] == "pass"
    audit = control(report, "security_audit").evidence
    assert audit[0].value.en == "1 rows, chain intact"  # type: ignore[union-attr]
    assert audit[-1].value.en.startswith("rows 1..2, purged ")  # type: ignore[union-attr]


def test_tls_in_front_or_loopback_only(platform: Platform) -> None:
    exposed = platform.report(gateway={"host": "0.0.0.0"})
    assert verdicts(exposed)["data_confidentiality"] == verdicts(exposed)["data_integrity"] == "fail"
    assert "TLS_TERMINATED" in control(exposed, "data_confidentiality").fix.en  # type: ignore[union-attr]
    proxied = platform.report(gateway={"host": "0.0.0.0"}, compliance={"tls_terminated": True})
    tls = control(proxied, "data_confidentiality").evidence[0]
    assert tls.ok is True and verdicts(proxied)["data_confidentiality"] == "pass"
    loopback = control(platform.report(), "data_confidentiality").evidence[0]
    assert loopback.ok is None and loopback.value.en.startswith("not applicable")  # type: ignore[union-attr]


def test_weak_admin_key_and_plaintext_api_key_fail_identification(platform: Platform) -> None:
    weak = control(platform.report(gateway={"admin_key": "abababababababababab"}), "identification")
    assert weak.verdict == "fail" and "32 random characters" in weak.fix.en  # type: ignore[union-attr]
    with platform.database.write() as session:
        session.execute(update(ApiKey).values(key_hash="mc-plaintext-secret"))
    leaked = control(platform.report(), "identification")
    assert leaked.verdict == "fail" and platform.key_id in leaked.evidence[0].value.en  # type: ignore[union-attr]


def test_stored_policies_that_turn_protection_off_are_listed(platform: Platform) -> None:
    with platform.database.write() as session:
        # as the admin API stores them: the whole policy's JSON
        session.execute(update(Tenant).values(
            screening_policy=Policy.with_overrides({"input": {"jailbreak": "log"}}).model_dump_json()))
        session.execute(update(ApiKey).values(
            screening_policy=Policy.with_overrides({"input": {"pii": "off"}}).model_dump_json()))
    report = platform.report()
    malicious, personal = control(report, "malicious_input"), control(report, "personal_information")
    assert malicious.verdict == personal.verdict == "fail"
    assert malicious.evidence[-1].value == "tenant acme"
    assert personal.evidence[-2].value == f"key {platform.key_id}"
    with platform.database.write() as session:
        session.execute(update(Tenant).values(screening_policy=Policy.default().model_dump_json()))
        session.execute(update(ApiKey).values(screening_policy=json.dumps({"input": "block everything"})))
    report = platform.report()
    assert control(report, "malicious_input").evidence[-1].value == f"key {platform.key_id} (unreadable)"


def test_pii_let_through_by_default_fails_personal_information(platform: Platform) -> None:
    failed = control(platform.report(screening={"default_policy": {"input": {"pii": "log"}}}), "personal_information")
    assert failed.verdict == "fail" and failed.evidence[1].value == "input=log, output=redact"


def test_a_default_policy_that_does_not_validate_fails_both_screening_controls(platform: Platform) -> None:
    report = platform.report(screening={"default_policy": {"input": {"jailbreak": "redact"}}})
    assert verdicts(report)["malicious_input"] == verdicts(report)["personal_information"] == "fail"
    refused = control(report, "malicious_input").evidence[1]
    assert refused.ok is False and "redact applies to" in refused.value  # type: ignore[operator]


def test_secret_files_readable_by_others_fail_confidentiality(platform: Platform) -> None:
    path = SecretFiles.of(platform.settings()).provider_key("openai")
    write_secret(path, "sk-test")
    assert verdicts(platform.report())["data_confidentiality"] == "pass"
    os.chmod(path, 0o644)
    failed = control(platform.report(), "data_confidentiality")
    assert failed.verdict == "fail" and failed.fix.en == f"chmod 600 {path}"  # type: ignore[union-attr]


def test_a_balance_the_ledger_does_not_explain_fails_integrity(platform: Platform) -> None:
    with platform.database.write() as session:
        session.execute(update(Tenant).values(balance=Decimal("1000")))
    failed = control(platform.report(), "data_integrity")
    assert failed.verdict == "fail" and "acme" in failed.evidence[2].value.en  # type: ignore[union-attr]


def test_without_the_labelled_set_the_rates_are_not_measured(platform: Platform) -> None:
    settings = platform.settings()
    facts = gather(settings, platform.database, audit_key=AUDIT_KEY.encode(), now=utcnow())
    report = judge(dataclasses.replace(facts, rates=[]))
    malicious = control(report, "malicious_input")
    assert malicious.verdict == "pass"
    assert any(item.value.en.startswith("not measured") for item in malicious.evidence  # type: ignore[union-attr]
               if item.ok is None)


def test_html_pdf_and_json_in_both_languages(platform: Platform, tmp_path: Path) -> None:
    report = platform.report(gateway={"host": "0.0.0.0"})
    chinese = render_html(report, "zh")
    for name in ("身份鉴别", "访问控制", "安全审计", "入侵防范", "恶意代码防范", "数据完整性", "数据保密性",
                 "数据备份恢复", "剩余信息保护", "个人信息保护", "整改建议", "不符合"):
        assert name in chinese
    english = render_html(report, "en")
    assert "Identification and authentication" in english and "<script" not in english and "http" not in english
    pdf_en, pdf_zh = render_pdf(report, "en"), render_pdf(report, "zh")
    assert pdf_en.startswith(b"%PDF") and pdf_zh.startswith(b"%PDF") and len(pdf_zh) > 2000
    assert b"STSong-Light" in pdf_zh and b"STSong-Light" not in pdf_en
    paths = write_report(report, tmp_path / "out")
    assert sorted(path.name.split(".", 1)[1] for path in paths) == ["en.html", "en.pdf", "json", "zh.html", "zh.pdf"]
    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert data["summary"]["fail"] == 3 and len(data["controls"]) == 10  # confidentiality, integrity, backup
    confidentiality = next(c for c in data["controls"] if c["id"] == "data_confidentiality")
    assert confidentiality["verdict"] == "fail" and confidentiality["fix"]["zh"]


def test_cli_report_writes_the_files_and_strict_fails_on_a_fail(platform: Platform, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MOECLOUD_HOME", str(platform.home))
    monkeypatch.setenv("MOECLOUD_GATEWAY__DB_URL", platform.database.url)
    monkeypatch.setenv("MOECLOUD_GATEWAY__ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("MOECLOUD_GATEWAY__AUDIT_KEY", AUDIT_KEY)
    out = platform.home / "reports"
    runner = CliRunner()
    result = runner.invoke(app, ["compliance", "report", "--out", str(out), "--lang", "zh", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {Path(path).name.split(".", 1)[1] for path in data["files"]} == {"zh.html", "zh.pdf", "json"}
    assert all(Path(path).exists() for path in data["files"])
    monkeypatch.setenv("MOECLOUD_GATEWAY__HOST", "0.0.0.0")
    relaxed = runner.invoke(app, ["compliance", "report", "--out", str(out)])
    assert relaxed.exit_code == 0 and "Data confidentiality" in relaxed.output
    assert runner.invoke(app, ["compliance", "report", "--out", str(out), "--strict"]).exit_code == 1


def test_screening_off_fails_personal_information_too(platform: Platform) -> None:
    failed = control(platform.report(screening={"enabled": False}), "personal_information")
    assert failed.verdict == "fail" and not failed.evidence[0].ok
