"""The controls over data: integrity, confidentiality, backup and recovery, residual information and personal
information, each a pure function of the gathered ``Facts`` (the others are in ``controls``)."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from moecloud.config import CHILD_SECTIONS
from moecloud.toolkit.compliance.controls import (
    PII_FALSE_POSITIVES,
    PII_TARGET,
    PII_UNIT,
    chain,
    day,
    listed,
    measured,
    policy_evidence,
    screening_evidence,
    switch,
    weakened,
)
from moecloud.toolkit.compliance.facts import Facts
from moecloud.toolkit.compliance.model import Control, Evidence, Text
from moecloud.toolkit.compliance.requirements import control

PURGE_SLACK = timedelta(days=1)  # rows may outlive their retention by up to a purge interval; a day is generous


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport(facts: Facts) -> Evidence:
    """TLS in front of the gateway: declared in the settings, seen in the gateway's URL, or moot on loopback."""
    host = facts.settings.gateway.host
    what = Text("TLS in front of the gateway", "网关前端的 TLS 加密")
    if facts.settings.compliance.tls_terminated:
        return Evidence(what, Text("a TLS proxy terminates client connections (compliance.tls_terminated)",
                                   "由 TLS 代理终结客户端连接（compliance.tls_terminated）"), True)
    if facts.gateway is not None and facts.gateway.url.startswith("https://"):
        return Evidence(what, Text(f"the gateway is reached at {facts.gateway.url}",
                                   f"网关通过 {facts.gateway.url} 访问"), True)
    if _loopback(host):
        return Evidence(what, Text(f"not applicable: the gateway listens on {host} only, no client connection leaves "
                                   "this machine", f"不适用：网关仅监听 {host}，客户端连接不离开本机"))
    return Evidence(
        what, Text(f"the gateway listens on {host} in plain HTTP and no TLS proxy is declared",
                   f"网关以明文 HTTP 监听 {host}，且未声明 TLS 代理"), False,
        Text("Put a TLS-terminating proxy (nginx, Caddy, a cloud load balancer) in front of the gateway and set "
             "MOECLOUD_COMPLIANCE__TLS_TERMINATED=true, or bind the gateway to 127.0.0.1.",
             "在网关前部署终结 TLS 的代理（nginx、Caddy 或云负载均衡），"
             "并设置 MOECLOUD_COMPLIANCE__TLS_TERMINATED=true，或将网关绑定到 127.0.0.1。"),
    )


def data_integrity(facts: Facts) -> Control:
    ledger = facts.ledger
    return control("data_integrity", [
        chain(facts),
        Evidence(Text("Ledger: one entry per request id", "账本：每个请求 ID 只记账一次"),
                 Text(f"{ledger.entries} entries, {ledger.duplicate_request_ids} request ids twice, database "
                      f"unique constraint {'present' if ledger.request_id_unique else 'missing'}",
                      f"{ledger.entries} 条记录，重复请求 ID {ledger.duplicate_request_ids} 个，数据库唯一约束"
                      f"{'存在' if ledger.request_id_unique else '缺失'}"),
                 ledger.request_id_unique and not ledger.duplicate_request_ids,
                 Text("Run the store's migrations (moecloud serve upgrades the database) and investigate the "
                      "duplicated request ids.",
                      "执行数据库迁移（moecloud serve 会升级数据库），并排查重复的请求 ID。")),
        Evidence(Text("Balances equal credits minus settled usage minus open holds",
                      "余额 = 充值 − 已结算用量 − 未结冻结"),
                 Text(f"{len(ledger.balance_mismatches)} tenants differ" + (
                     f": {listed(ledger.balance_mismatches)}" if ledger.balance_mismatches else ""),
                      f"{len(ledger.balance_mismatches)} 个租户不一致" + (
                     f"：{listed(ledger.balance_mismatches)}" if ledger.balance_mismatches else "")),
                 not ledger.balance_mismatches,
                 Text("Compare the listed tenants' balances with their ledger entries and the audit log.",
                      "核对所列租户的余额、账本记录与审计日志。")),
        transport(facts),
    ])


def data_confidentiality(facts: Facts) -> Control:
    modes = facts.secret_modes
    open_files = [path for path, mode in modes.items() if mode & 0o077]
    handed = sorted(CHILD_SECTIONS & {"gateway", "provider_keys"})
    return control("data_confidentiality", [
        transport(facts),
        Evidence(Text("Secret files under <home>/secrets", "<home>/secrets 下的密钥文件"),
                 Text(", ".join(f"{path} {mode:04o}" for path, mode in modes.items()) or "none (secrets from the "
                      "settings)", ", ".join(f"{path} {mode:04o}" for path, mode in modes.items())
                      or "无（密钥来自配置）"),
                 not open_files if modes else None,
                 Text(f"chmod 600 {' '.join(open_files)}", f"执行 chmod 600 {' '.join(open_files)}")),
        Evidence(Text("Settings handed to engine workers (config.CHILD_SECTIONS)",
                      "传给推理进程的配置段（config.CHILD_SECTIONS）"),
                 ", ".join(sorted(CHILD_SECTIONS)), not handed,
                 Text(f"Remove {', '.join(handed)} from CHILD_SECTIONS: keys must not leave the gateway.",
                      f"从 CHILD_SECTIONS 中移除 {', '.join(handed)}：密钥不得离开网关。")),
    ])


def backup_recovery(facts: Facts) -> Control:
    backup, check, max_age = facts.backup, facts.restore, facts.settings.backup.max_age_hours
    fix = Text("Run moecloud backup create, and schedule it at least daily.",
               "执行 moecloud backup create，并至少每天定时执行。")
    what = Text("Newest backup archive", "最新备份")
    if backup is None:
        reason = facts.backup_error
        found = Text(f"no readable archive in {facts.backup_dir}" + (f" ({reason})" if reason else ""),
                     f"{facts.backup_dir} 中没有可读的备份" + (f"（{reason}）" if reason else ""))
        evidence = [Evidence(what, found, False, fix)]
    else:
        age = backup.age(facts.now).total_seconds() / 3600
        evidence = [Evidence(what, Text(f"{backup.path}, made {day(backup.created_at)}, {backup.rows} rows, "
                                        f"{age:.1f} h old (at most {max_age:g})",
                                        f"{backup.path}，生成于 {day(backup.created_at)}，{backup.rows} 行，"
                                        f"已 {age:.1f} 小时（上限 {max_age:g}）"),
                             age <= max_age, fix)]
    if check is not None:
        evidence.append(Evidence(
            Text("Restore test of it into an empty database, run for this report",
                 "本次报告对其执行的空库恢复测试"),
            Text(f"{'restored' if check.ok else 'failed'} in {check.seconds:.1f} s: {check.detail}",
                 f"{'恢复成功' if check.ok else '恢复失败'}，用时 {check.seconds:.1f} 秒：{check.detail}"),
            check.ok,
            Text("Make a new backup (moecloud backup create) and find why this one does not restore "
                 "(moecloud backup check).",
                 "重新备份（moecloud backup create），并排查该备份无法恢复的原因（moecloud backup check）。")))
    return control("backup_recovery", evidence)


def _retained(what: Text, days: int | None, setting: str, oldest: datetime | None, now: datetime) -> list[Evidence]:
    if days is None:
        return [Evidence(what, Text("kept indefinitely", "永久保存"), False,
                         Text(f"Set {setting} so that old rows are purged.", f"设置 {setting}，使过期数据被清除。"))]
    evidence = [Evidence(what, Text(f"{days} days", f"{days} 天"), True)]
    if oldest is not None:
        overdue = now - oldest > timedelta(days=days) + PURGE_SLACK
        evidence.append(Evidence(
            Text(f"Oldest row under {setting}", f"{setting} 所管数据中最早的一行"), day(oldest), not overdue,
            Text(f"Rows older than {setting} remain: check that the gateway's purge runs.",
                 f"存在超过 {setting} 的数据：检查网关的定期清除是否运行。")))
    return evidence


def _keep_prompt(facts: Facts) -> Evidence:
    keep = facts.default_policy is not None and facts.default_policy.keep_prompt
    return Evidence(Text("Raw prompts kept in the audit log (keep_prompt of the default policy)",
                         "审计日志保留原始提示词（默认策略 keep_prompt）"),
                    switch(keep), not keep,
                    Text("Set keep_prompt false in screening.default_policy.",
                         "在 screening.default_policy 中将 keep_prompt 设为 false。"))


def residual_information(facts: Facts) -> Control:
    retention, ages = facts.settings.retention, facts.ages
    evidence = _retained(Text("Usage retention (retention.usage_days)", "用量记录保存期（retention.usage_days）"),
                         retention.usage_days, "retention.usage_days", ages.oldest_usage, facts.now)
    evidence += _retained(Text("Audit retention (retention.audit_days)", "审计记录保存期（retention.audit_days）"),
                          retention.audit_days, "retention.audit_days", ages.oldest_audit, facts.now)
    return control("residual_information", [*evidence, _keep_prompt(facts)])


def personal_information(facts: Facts) -> Control:
    policy = facts.default_policy
    evidence = [screening_evidence(facts)]
    evidence += [policy_evidence(facts)] if policy is None else [
        Evidence(Text("PII in the default policy", "默认策略中的个人信息处理"),
                 f"input={policy.input.pii}, output={policy.output.pii}",
                 policy.input.pii in ("block", "redact") and policy.output.pii in ("block", "redact"),
                 Text("Set pii to redact on input and output in screening.default_policy.",
                      "在 screening.default_policy 中将输入、输出的 pii 设为 redact。")),
        *measured(facts, PII_UNIT, PII_TARGET, PII_FALSE_POSITIVES,
                  Text("PII found on the held-out set", "留出集个人信息识别实测")),
    ]
    weak = weakened(facts, ("pii",), ("block", "redact"))
    evidence += [
        Evidence(Text("Tenants and keys whose stored policy lets PII through", "存储策略放行个人信息的租户和密钥"),
                 listed(weak) or Text("none", "无"), not weak,
                 Text("Set pii to redact in the listed policies, or record each as an approved exception.",
                      "将所列策略的 pii 设为 redact，或将其逐一登记为经批准的例外。")),
        _keep_prompt(facts),
    ]
    return control("personal_information", evidence)
