"""`moecloud compliance report`: the platform checked against the technical controls of an MLPS 2.0 level-3
system, with the evidence gathered live, a verdict per control and the fix for each fail (docs/compliance.md)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from moecloud.config import Settings
from moecloud.store import Database
from moecloud.toolkit.compliance import controls, data_controls
from moecloud.toolkit.compliance.facts import Facts, gather
from moecloud.toolkit.compliance.model import LANGS, Control, Evidence, Lang, Report, Text, Verdict
from moecloud.toolkit.compliance.render import render_html, render_pdf, write_report

CONTROLS: tuple[Callable[[Facts], Control], ...] = (
    controls.identification, controls.access_control, controls.security_audit, controls.intrusion_prevention,
    controls.malicious_input, data_controls.data_integrity, data_controls.data_confidentiality,
    data_controls.backup_recovery, data_controls.residual_information, data_controls.personal_information,
)

__all__ = ["CONTROLS", "LANGS", "Control", "Evidence", "Lang", "Report", "Text", "Verdict", "collect", "judge",
           "render_html", "render_pdf", "write_report"]


def collect(settings: Settings, database: Database, *, audit_key: bytes, gateway_url: str | None = None) -> Report:
    """Gather the evidence live and judge every control (blocking: a second or so, most of it the screening
    library's measured rates)."""
    now = datetime.now(UTC)
    return judge(gather(settings, database, audit_key=audit_key, now=now, gateway_url=gateway_url))


def judge(facts: Facts) -> Report:
    """Every control's verdict on ``facts`` (pure)."""
    try:
        moecloud_version = version("moecloud")
    except PackageNotFoundError:
        moecloud_version = "source checkout"
    platform = {
        "home": str(facts.settings.home.resolve()),
        "database": facts.database,
        "gateway": f"{facts.settings.gateway.host}:{facts.settings.gateway.port}",
        "version": moecloud_version,
    }
    if facts.gateway is not None:
        platform["gateway_url"] = facts.gateway.url
        platform["gateway_health"] = str(facts.gateway.status) if facts.gateway.status else facts.gateway.error
    return Report(created_at=facts.now, platform=platform, controls=[control(facts) for control in CONTROLS])
