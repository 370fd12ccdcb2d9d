"""The ten technical controls of an MLPS 2.0 (GB/T 22239-2019) level-3 system that a model platform can be checked
against, each a pure function of the gathered ``Facts``: the evidence it looked at, each item judged."""

from __future__ import annotations

import hashlib
from datetime import datetime

from moecloud.security import Action, Category
from moecloud.security.evaluation import Rate
from moecloud.toolkit.compliance.facts import Facts, shannon_bits, stored_policy
from moecloud.toolkit.compliance.model import Control, Evidence, Text
from moecloud.toolkit.compliance.requirements import control

ADMIN_KEY_BITS = 128  # the least estimated strength of the admin key
MAX_BODY_BYTES = 16 * 1024 * 1024
AUDIT_MIN_DAYS = 180  # level 3: audit records kept at least six months
ATTACK_TARGET, ATTACK_FALSE_POSITIVES = 0.90, 0.03
PII_TARGET, PII_FALSE_POSITIVES = 0.98, 0.01
ATTACK_UNIT, PII_UNIT = "verify_input: injection+jailbreak", "verify_input: pii"


def day(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "-"


def switch(on: bool) -> Text:
    return Text("on", "开启") if on else Text("off", "关闭")


def listed(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")


def _keys_hashed(facts: Facts) -> Evidence:
    bad = facts.keys.not_hashed
    return Evidence(
        Text("API keys in the api_keys table", "api_keys 表中的 API 密钥"),
        Text(f"{facts.keys.keys} keys, {len(bad)} not stored as a sha256 digest" + (f": {listed(bad)}" if bad else ""),
             f"共 {facts.keys.keys} 个密钥，{len(bad)} 个未以 sha256 摘要保存" + (f"：{listed(bad)}" if bad else "")),
        not bad,
        Text("Rotate the listed keys (moecloud keys rotate) so that only their sha256 digest is kept.",
             "轮换所列密钥（moecloud keys rotate），使数据库只保存其 sha256 摘要。"),
    )


def _auth_failures(facts: Facts) -> Evidence:
    gateway = facts.settings.gateway
    per_second = gateway.auth_failure_limit / gateway.auth_failure_window_seconds
    return Evidence(
        Text("Failed authentications allowed per client address", "每个客户端地址允许的鉴别失败次数"),
        Text(f"{gateway.auth_failure_limit} per {gateway.auth_failure_window_seconds:g} s, then 429",
             f"每 {gateway.auth_failure_window_seconds:g} 秒 {gateway.auth_failure_limit} 次，超过后返回 429"),
        per_second <= 1.0,
        Text("Set gateway.auth_failure_limit / auth_failure_window_seconds to at most one failure per second.",
             "将 gateway.auth_failure_limit / auth_failure_window_seconds 设为每秒不超过一次失败。"),
    )


def identification(facts: Facts) -> Control:
    key = facts.admin_key or ""
    bits = shannon_bits(key)
    admin = Evidence(
        Text(f"Admin key ({facts.admin_key_source})", f"管理密钥（{facts.admin_key_source}）"),
        Text(f"{len(key)} characters, about {bits:.0f} bits (needs {ADMIN_KEY_BITS})",
             f"{len(key)} 个字符，约 {bits:.0f} 位熵（要求 {ADMIN_KEY_BITS} 位）") if key
        else Text("none yet (a gateway generates one at its first start)", "尚无（网关首次启动时生成）"),
        bits >= ADMIN_KEY_BITS if key else None,
        Text("Unset gateway.admin_key to use the generated 256-bit key, or set one of at least 32 random characters.",
             "取消 gateway.admin_key 以使用自动生成的 256 位密钥，或设置至少 32 个随机字符的密钥。"),
    )
    return control("identification", [_keys_hashed(facts), admin, _auth_failures(facts)])


def access_control(facts: Facts) -> Control:
    settings = facts.settings
    roots = settings.gateway.admin_path_roots or [settings.home / "models"]
    secrets = (settings.home / "secrets").resolve()
    exposing = [str(root) for root in roots if secrets.is_relative_to(root.resolve())]
    unscoped = facts.keys.unscoped_active
    admin_hash = hashlib.sha256((facts.admin_key or "").encode()).hexdigest()
    shared = bool(facts.admin_key) and (admin_hash in facts.keys.hashes or facts.admin_is_audit_key)
    return control("access_control", [
        Evidence(Text("Active API keys limited to named models", "限定可调用模型的有效 API 密钥"),
                 Text(f"{facts.keys.active} active keys, {len(unscoped)} may call every model"
                      + (f": {listed(unscoped)}" if unscoped else ""),
                      f"{facts.keys.active} 个有效密钥，其中 {len(unscoped)} 个可调用全部模型"
                      + (f"：{listed(unscoped)}" if unscoped else ""))),
        Evidence(Text("Admin key separate from tenant keys and the audit key", "管理密钥与租户密钥、审计密钥分离"),
                 Text("shared" if shared else "separate", "存在共用" if shared else "相互独立"), not shared,
                 Text("Give /admin its own key (gateway.admin_key) that no tenant key or audit key equals.",
                      "为 /admin 配置独立的管理密钥，不与任何租户密钥或审计密钥相同。")),
        Evidence(Text("Host paths the admin API may read (gateway.admin_path_roots)",
                      "管理接口可读取的主机路径（gateway.admin_path_roots）"),
                 ", ".join(map(str, roots)), not exposing,
                 Text(f"Remove {', '.join(exposing)} from gateway.admin_path_roots: it contains the secret files.",
                      f"从 gateway.admin_path_roots 中删除 {', '.join(exposing)}：其中包含密钥文件。")),
    ])


def chain(facts: Facts) -> Evidence:
    problems = facts.audit_problems
    return Evidence(
        Text("Audit chain verification (HMAC-SHA256 over each row and its predecessor)",
             "审计链校验（HMAC-SHA256 逐行链接）"),
        Text(f"{facts.audit_rows} rows, " + (f"{len(problems)} problems: {listed(problems, 5)}" if problems
                                              else "chain intact"),
             f"{facts.audit_rows} 行，" + (f"{len(problems)} 处问题：{listed(problems, 5)}" if problems
                                           else "链完整")),
        not problems,
        Text("Investigate the named rows (moecloud audit verify), restore the audit log from the last good backup "
             "and rotate the audit key if it may have leaked.",
             "排查所列审计行（moecloud audit verify），从最近的可信备份恢复审计日志，如密钥可能泄露则更换审计密钥。"),
    )


def security_audit(facts: Facts) -> Control:
    days = facts.settings.retention.audit_days
    ages = facts.ages
    evidence = [
        chain(facts),
        Evidence(Text("Audit records held", "现存审计记录"),
                 f"{day(ages.oldest_audit)} .. {day(ages.newest_audit)}"),
        Evidence(Text("Audit retention (retention.audit_days)", "审计记录保存期（retention.audit_days）"),
                 Text("kept indefinitely", "永久保存") if days is None else Text(f"{days} days", f"{days} 天"),
                 days is None or days >= AUDIT_MIN_DAYS,
                 Text(f"Set retention.audit_days to at least {AUDIT_MIN_DAYS}.",
                      f"将 retention.audit_days 设为不少于 {AUDIT_MIN_DAYS} 天。")),
    ]
    if ages.anchor_through is not None:
        evidence.append(Evidence(Text("Purged audit rows (signed anchor)", "已清理的审计记录（签名锚点）"),
                                 Text(f"rows 1..{ages.anchor_through}, purged {day(ages.anchor_purged_at)}",
                                      f"第 1..{ages.anchor_through} 行，清理于 {day(ages.anchor_purged_at)}")))
    return control("security_audit", evidence)


def intrusion_prevention(facts: Facts) -> Control:
    gateway = facts.settings.gateway
    limits = {name: getattr(gateway, name)
              for name in ("key_rpm", "key_tpm", "key_max_concurrency", "tenant_rpm", "tenant_tpm")}
    unlimited = [name for name, value in limits.items() if value is None]
    return control("intrusion_prevention", [
        Evidence(Text("Default rate limits (gateway.*)", "默认速率限制（gateway.*）"),
                 ", ".join(f"{name}={'unlimited' if value is None else value}" for name, value in limits.items()),
                 not unlimited,
                 Text(f"Set {', '.join(unlimited)} in the gateway settings.",
                      f"在网关配置中设置 {', '.join(unlimited)}。")),
        _auth_failures(facts),
        Evidence(Text("Largest accepted request body (gateway.max_body_bytes)",
                      "允许的最大请求体（gateway.max_body_bytes）"),
                 Text(f"{gateway.max_body_bytes} bytes", f"{gateway.max_body_bytes} 字节"),
                 gateway.max_body_bytes <= MAX_BODY_BYTES,
                 Text(f"Lower gateway.max_body_bytes to at most {MAX_BODY_BYTES}.",
                      f"将 gateway.max_body_bytes 降至不超过 {MAX_BODY_BYTES}。")),
        Evidence(Text("Fault injection header (serving.fault_injection)",
                      "故障注入请求头（serving.fault_injection）"),
                 switch(facts.settings.serving.fault_injection),
                 not facts.settings.serving.fault_injection,
                 Text("Turn serving.fault_injection off: it is for tests only.",
                      "关闭 serving.fault_injection：该功能仅用于测试。")),
        Evidence(Text("Requests allowed to wait per model (admission.queue_limit)",
                      "每个模型的排队上限（admission.queue_limit）"),
                 str(facts.settings.admission.queue_limit)),
    ])


def measured(facts: Facts, unit: str, target: float, false_positives: float, what: Text) -> list[Evidence]:
    found: list[Rate] = [rate for rate in facts.rates if rate.unit == unit]
    if not found:
        return [Evidence(what, Text("not measured: the labelled set benchmarks/safety/ is not installed",
                                    "未测量：未安装标注数据集 benchmarks/safety/"))]
    return [
        Evidence(
            Text(f"{what.en}, {rate.lang}", f"{what.zh}（{rate.lang}）"),
            Text(f"detected {rate.detected}/{rate.positives} ({rate.detection:.1%}, target {target:.0%}), false "
                 f"positives {rate.false_positives}/{rate.negatives} ({rate.false_positive:.1%}, at most "
                 f"{false_positives:.0%})",
                 f"检出 {rate.detected}/{rate.positives}（{rate.detection:.1%}，目标 {target:.0%}），误报 "
                 f"{rate.false_positives}/{rate.negatives}（{rate.false_positive:.1%}，不超过 {false_positives:.0%}）"),
            rate.detection >= target and rate.false_positive <= false_positives,
            Text(f"Retrain the classifier or extend the rules for {rate.lang} (moecloud.security.train).",
                 f"针对 {rate.lang} 重新训练分类器或补充规则（moecloud.security.train）。"),
        )
        for rate in found
    ]


def weakened(facts: Facts, categories: tuple[Category, ...], allowed: tuple[Action, ...]) -> list[str]:
    """Stored policies that act on one of ``categories`` of the input with an action outside ``allowed``."""
    weakened = []
    for stored in facts.policies:
        policy = stored_policy(stored.policy)
        if policy is None:
            weakened.append(f"{stored.kind} {stored.name} (unreadable)")
        elif any(policy.input.of(category) not in allowed for category in categories):
            weakened.append(f"{stored.kind} {stored.name}")
    return weakened


def policy_evidence(facts: Facts) -> Evidence:
    return Evidence(Text("Default screening policy (screening.default_policy)",
                         "默认筛查策略（screening.default_policy）"),
                    facts.default_policy_error, False,
                    Text("Correct screening.default_policy: it does not validate.",
                         "修正 screening.default_policy：其内容无法通过校验。"))


def screening_evidence(facts: Facts) -> Evidence:
    """Whether the gateway screens at all (a policy that is never applied protects nothing)."""
    return Evidence(Text("Screening of prompts and responses (screening.enabled)", "输入输出筛查（screening.enabled）"),
                    switch(facts.settings.screening.enabled), facts.settings.screening.enabled,
                    Text("Set screening.enabled to true.", "将 screening.enabled 设为 true。"))


def malicious_input(facts: Facts) -> Control:
    policy = facts.default_policy
    evidence = [screening_evidence(facts)]
    if policy is None:
        evidence.append(policy_evidence(facts))
    else:
        actions = {category: policy.input.of(category) for category in ("prompt_injection", "jailbreak", "obfuscation")}
        evidence.append(Evidence(
            Text("Default input policy for injection and jailbreak", "默认输入策略（提示注入、越狱）"),
            ", ".join(f"{name}={action}" for name, action in actions.items()),
            actions["prompt_injection"] == actions["jailbreak"] == "block",
            Text("Set screening.default_policy input prompt_injection and jailbreak to block.",
                 "将 screening.default_policy 的输入 prompt_injection 与 jailbreak 设为 block。")))
        evidence += measured(facts, ATTACK_UNIT, ATTACK_TARGET, ATTACK_FALSE_POSITIVES,
                              Text("Measured on the held-out set", "留出集实测"))
    lax = weakened(facts, ("prompt_injection", "jailbreak"), ("block",))
    evidence.append(Evidence(
        Text("Tenants and keys whose stored policy does not block injection or jailbreak",
             "存储策略未拦截提示注入或越狱的租户和密钥"),
        listed(lax) or Text("none", "无"), not lax,
        Text("Restore blocking in the listed policies, or record each as an approved exception.",
             "恢复所列策略的拦截动作，或将其逐一登记为经批准的例外。")))
    return control("malicious_input", evidence)
