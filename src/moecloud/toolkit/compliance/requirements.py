"""The controls of the report, in its order: each one's name and the level-3 requirement it checks (GB/T
22239-2019, paraphrased in one sentence), in English and Chinese."""

from __future__ import annotations

from moecloud.toolkit.compliance.model import Control, Evidence, Text

REQUIREMENTS: dict[str, tuple[Text, Text]] = {
    "identification": (
        Text("Identification and authentication", "身份鉴别"),
        Text("Every user is identified and authenticated, credentials are strong and stored protected, and repeated "
             "authentication failures are limited.",
             "应对登录用户进行身份标识和鉴别，鉴别信息具有复杂度要求并加密存储，并具有登录失败处理功能。"),
    ),
    "access_control": (
        Text("Access control", "访问控制"),
        Text("Accounts get only the rights their role needs, administration is separated from use, and access to "
             "files is limited to what is configured.",
             "应授予账户所需的最小权限，实现管理用户与业务用户的权限分离，并限制对文件等客体的访问。"),
    ),
    "security_audit": (
        Text("Security audit", "安全审计"),
        Text("Security-relevant events of every user are recorded with date, actor and outcome, and the records are "
             "protected from deletion, alteration and overwriting and kept at least six months.",
             "应对每个用户的重要安全事件进行审计，记录日期、主体和结果，并保护审计记录不被删除、修改或覆盖，"
             "留存不少于六个月。"),
    ),
    "intrusion_prevention": (
        Text("Intrusion prevention", "入侵防范"),
        Text("Only the needed services are exposed, input is bounded, and abuse such as floods and password guessing "
             "is detected and limited.",
             "应关闭不需要的服务，对输入数据进行有效性检验，并能检测和限制暴力破解、流量攻击等入侵行为。"),
    ),
    "malicious_input": (
        Text("Malicious input prevention", "恶意代码防范（恶意输入防范）"),
        Text("Malicious code and attacks are detected and blocked where they enter, and the protection is kept "
             "effective and up to date.",
             "应在关键节点对恶意代码和攻击进行检测和清除，并保持防范机制的有效性与及时更新。"),
    ),
    "data_integrity": (
        Text("Data integrity", "数据完整性"),
        Text("Important data (authentication data, audit records, business data) is protected by cryptographic or "
             "other checks against tampering, in storage and in transit.",
             "应采用校验技术或密码技术保证鉴别数据、审计数据和重要业务数据在传输和存储过程中的完整性。"),
    ),
    "data_confidentiality": (
        Text("Data confidentiality", "数据保密性"),
        Text("Authentication data and other important data are protected by encryption or access restriction in "
             "transit and in storage.",
             "应采用密码技术或访问限制保证鉴别数据和重要数据在传输和存储过程中的保密性。"),
    ),
    "backup_recovery": (
        Text("Data backup and recovery", "数据备份恢复"),
        Text("Important data is backed up regularly and the backups are shown to restore.",
             "应提供重要数据的本地备份与恢复功能，定期备份并验证备份可恢复。"),
    ),
    "residual_information": (
        Text("Residual information protection", "剩余信息保护"),
        Text("Storage holding authentication or personal data is cleared when released, and data is not kept "
             "longer than needed.",
             "应保证鉴别信息和敏感数据所在的存储空间被释放或重新分配前得到完全清除，数据不超期留存。"),
    ),
    "personal_information": (
        Text("Personal information protection", "个人信息保护"),
        Text("Only the personal information the service needs is collected, and unauthorised access to and use of "
             "it is prevented.",
             "应仅采集和保存业务必需的用户个人信息，并禁止未授权访问和非法使用。"),
    ),
}


def control(control_id: str, evidence: list[Evidence]) -> Control:
    name, requirement = REQUIREMENTS[control_id]
    return Control(control_id, name, requirement, evidence)
