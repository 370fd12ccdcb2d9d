"""Prompt injection and jailbreak by weighted patterns, English and Chinese.

A strong pattern (weight 1.0) fires alone; a weak one (a phrase with benign uses, such as "developer mode" or
越狱, which is also a film genre) fires only together with another of its category. The patterns look for an
act on the model's instructions, never for a word alone, so "ignore whitespace in git diff" or "how do I
override a method in Java" match nothing. Revised after the misses of the first two held-out batches were seen
(benchmarks/safety/, docs/security.md says what that means for the measured rates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moecloud.security.findings import Category, Finding

FIRE = 1.0
I = re.DOTALL  # noqa: E741  (one letter keeps the table below readable); patterns see the lower-cased text
CASED = re.ASCII  # marks the one rule that reads the text as written (DAN is a name, "dan" a word)
INSTRUCTIONS_EN = r"(?:instructions?|prompts?|rules|directions|directives|guidelines|commands|constraints|programming)"
VOIDED_ZH = r"(?:.{0,6}?)(?:忘掉|忘记|忽略|无视|作废|不算数|失效|无效|取消|不用管|不再有效)"
INSTRUCTIONS_ZH = r"(?:指令|指示|提示词|提示|规则|设定|命令|约束|限制|要求|规定)"

@dataclass(frozen=True)
class Rule:
    category: Category
    weight: float
    reason: str
    needs: tuple[str, ...]  # the pattern cannot match unless one of these is in the lower-cased text: a cheap skip
    pattern: re.Pattern[str]
    cased: bool  # matched against the text as written, not lower-cased


RULES: tuple[Rule, ...] = tuple(
    Rule(category, weight, reason, tuple(needs.split("|")), re.compile(pattern, flags), bool(flags & CASED))
    for category, weight, reason, needs, pattern, flags in (
        ("prompt_injection", 1.0, "asks to ignore the instructions before it",
         "ignore|disregard|forget|discard|skip|override|bypass|drop|abandon|neglect",
         r"\b(?:ignore|disregard|forget|discard|skip|override|bypass|drop|abandon|neglect)\b(?:\W+\w+){0,4}?\W+"
         r"(?:previous|prior|above|earlier|preceding|initial|original|system|existing|old|any|all|your)"
         r"(?:\W+\w+){0,2}?\W+" + INSTRUCTIONS_EN + r"\b", I),
        ("prompt_injection", 1.0, "asks for the hidden system prompt", "prompt|instruction|message|rules|configuration",
         r"\b(?:reveal|show|print|output|repeat|display|leak|dump|recite|expose|share|tell me|give me|spell out|"
         r"copy|write out|paste|quote|send me|provide|what (?:is|are|was|were|does|do))\b(?:\W+\w+){0,5}?\W+"
         r"(?:your|the|its|this)\W+(?:\w+\W+)?"
         r"(?:system|initial|hidden|original|developer|secret|confidential|pre-?prompt|internal)"
         r"\W+(?:prompt|instructions?|message|rules|configuration)", I),
        ("prompt_injection", 1.0, "asks for its instructions word for word",
         "verbatim|word for word|exactly|in full|as is|code block",
         r"\b(?:system|developer|hidden|initial|original|confidential|internal|secret)\s+(?:prompt|instructions?|"
         r"message)\b.{0,60}?\b(?:verbatim|word for word|exactly|in full|as is|in a code block)\b|\b(?:verbatim|"
         r"word for word)\b.{0,60}?\b(?:system|developer|hidden|initial|original)\s+(?:prompt|instructions?)", I),
        ("prompt_injection", 0.6, "asks to repeat the text above", "above|before this|context",
         r"\b(?:repeat|print|output|copy|dump|echo)\b.{0,20}?\b(?:everything|all(?: of)?(?: the)? text|the text|"
         r"the words|all the words|the contents)\b.{0,12}?\b(?:above|before this|of your context)", I),
        ("prompt_injection", 0.5, "asks for it verbatim", "verbatim|word for word|exactly as written|starting",
         r"\b(?:verbatim|word for word|exactly as written)\b|\bstarting (?:from|with) [\"'‘“]?you are\b", I),
        ("prompt_injection", 1.0, "asks to forget what it was told", "forget",
         r"\bforget (?:what|everything|all) (?:that )?you (?:were|have been|'ve been) (?:told|given|instructed|taught)",
         I),
        ("prompt_injection", 1.0, "tells the assistant it is no longer the assistant", "no longer",
         r"\byou(?: are|'re) no longer (?:a|an|the|my)?\s*(?:\w+[ -]){0,3}?(?:bot|assistant|ai|model|chatbot|"
         r"language model|agent)\b", I),
        ("prompt_injection", 0.6, "announces new instructions",
         "new ", r"\bnew (?:instructions?|rules|task|directive)s?\s*:", I),
        ("prompt_injection", 0.5, "redefines the assistant from now on",
         "from now on|starting now|henceforth|rest of this conversation",
         r"\b(?:from now on|starting now|henceforth|for the rest of this conversation)\b.{0,40}?\b(?:you|respond|"
         r"answer|reply|act|only)\b", I),
        ("prompt_injection", 0.7, "tells the assistant it is no longer itself", "no longer|forget|your new",
         r"\byou(?: are|'re) no longer\b|\bforget (?:that )?you are\b|\byour new (?:role|task|purpose|goal)\b", I),
        ("prompt_injection", 0.8, "fake system or instruction delimiters", "<|[|##|system",
         r"</?(?:system|instructions?|sys)>|\[/?(?:system|inst)\]|<\|im_(?:start|end)\|>|<\|system\|>|"
         r"^\s*#{2,}\s*(?:system|new instructions?)\b|\bsystem\s*(?:override|message)\s*:", re.M),
        ("prompt_injection", 1.0, "asks to send data somewhere", "http|webhook|@",
         r"\b(?:send|post|forward|upload|exfiltrate|transmit|email|leak)\b.{0,60}?\b(?:conversation|chat history|"
         r"history|api keys?|credentials|passwords?|secrets?|tokens?|user data|previous messages)\b.{0,40}?"
         r"(?:https?://|\bwebhook\b|\S+@\S+\.\w+)", I),
        ("prompt_injection", 0.8, "tells the assistant to stop following its rules", "follow|obey|apply|respect|adhere",
         r"\b(?:do not|don't|stop|no longer|never)\s+(?:follow|obey|apply|respect|adhere to)\b(?:\W+\w+){0,3}?\W+"
         + INSTRUCTIONS_EN, I),
        ("prompt_injection", 0.5, "claims the instructions above were a test or are void", "above|previous|prior",
         r"\b(?:the )?(?:above|previous|prior) (?:instructions?|text|prompt) (?:was|were|is|are) "
         r"(?:just |only )?(?:a test|fake|void|cancell?ed|wrong|outdated)", I),
        ("prompt_injection", 1.0, "要求忽略之前的指令", "忽略|无视|忽视|理会|忘记|忘掉|抛开|跳过|丢弃|放弃|推翻",
         r"(?:忽略|无视|忽视|不要理会|别理会|不用理会|忘记|忘掉|抛开|跳过|丢弃|放弃|推翻)(?:掉|了)?.{0,8}?"
         r"(?:之前|以前|上面|上述|先前|前面|原来|原有|原先|所有|全部|一切|系统|你的|既有|已有|此前)的?.{0,8}?"
         + INSTRUCTIONS_ZH, I),
        ("prompt_injection", 1.0, "宣布之前的指令作废", "作废|不算数|失效|无效|取消|不用管|忘掉|忘记|忽略|无视",
         r"(?:之前|以前|上面|上述|先前|前面|原来|原有|此前|刚才|以上)(?:收到|给你|给出|设定|告诉你)?的?.{0,6}?"
         r"(?:指令|指示|提示词|设定)" + VOIDED_ZH, I),
        ("prompt_injection", 0.6, "宣布之前的规则作废（老板的要求也会作废：弱）",
         "作废|不算数|失效|无效|取消|不用管|忘掉|忘记|忽略|无视",
         r"(?:之前|以前|上面|上述|先前|前面|原来|原有|此前|刚才|以上)的?.{0,6}?"
         r"(?:规则|规定|约束|限制|要求)" + VOIDED_ZH, I),
        ("prompt_injection", 1.0, "要求原样说出指令", "提示|指令|设定",
         r"(?:系统提示(?!音)|提示词|初始指令|原始指令|预设指令|系统指令|隐藏指令|系统设定|收到的指令|原始设定)"
         r".{0,20}?(?:原封不动|一字不差|逐字|逐条|完整地|全部|发给我|说出来|列出来|贴出来|复述|写出来|给我看)|"
         r"(?:原封不动|一字不差|逐字|逐条|完整地)(?:地)?.{0,20}?(?:系统提示(?!音)|提示词|初始指令|原始指令|预设指令|"
         r"系统指令|隐藏指令|系统设定|收到的指令)", I),
        ("prompt_injection", 0.6, "要求只服从用户",
         "听|服从", r"只(?:需要|能)?(?:听|听从|服从)(?:我的|我)|服从我的(?:命令|指令)", I),
        ("prompt_injection", 1.0, "索取系统提示词", "系统|指令|提示|system",
         r"(?:输出|显示|打印|告诉我|透露|泄露|泄漏|复述|重复|给我看|展示|写出|念出|公开|列出|发给我|说出)"
         r"(?:一下|一遍)?.{0,10}?(?:系统提示(?!音)|系统指令|初始指令|隐藏指令|系统设定|系统消息|预设指令|"
         r"初始提示|原始指令|内部指令|system ?prompt)", I),
        ("prompt_injection", 0.5, "从现在开始重新定义助手", "从现在|从此刻|接下来|从这一刻",
         r"(?:从现在开始|从现在起|从此刻起|接下来的对话中|从这一刻起)[，,]?.{0,12}?(?:你|只)", I),
        ("prompt_injection", 0.6, "宣布新的指令", "新", r"新的?(?:指令|任务|规则|设定)[:：]", I),
        ("prompt_injection", 0.8, "要求不再遵守规则", "遵守|遵循|理会|听从|执行|服从",
         r"(?:不要|别|不再|停止|无需|不必|不用)(?:再)?(?:遵守|遵循|理会|听从|执行|服从).{0,8}?" + INSTRUCTIONS_ZH, I),
        ("prompt_injection", 0.7, "否定助手原本的身份", "不再是|忘记你是|你的新",
         r"你(?:已经)?不再是|忘记你是|你的新(?:身份|角色|任务|目标)", I),
        ("prompt_injection", 1.0, "要求把数据发送出去", "发|传|提交",
         r"(?:把|将).{0,20}?(?:对话|聊天记录|历史记录|密钥|密码|令牌|用户数据|上下文).{0,12}?"
         r"(?:发送|发|上传|转发|提交|传)(?:到|给|至)", I),
        ("prompt_injection", 1.0, "claims priority over the system's instructions", "priority|overrides",
         r"\bhigher priority than (?:your|the|any|all)\b(?:\W+\w+){0,2}?\W+(?:system|previous|earlier|prior|original)|"
         r"\boverrides? (?:your|the|all|any) (?:earlier|previous|prior|system|original) "
         r"(?:instructions|rules|prompt)", I),
        ("prompt_injection", 1.0, "声称优先级高于系统指令", "优先级",
         r"优先级(?:高于|比|超过).{0,12}?(?:系统|之前|此前|原来|你的)", I),
        ("jailbreak", 1.0, "asks to switch off its safeguards", "turn off|disable|switch off|remove|lift|bypass",
         r"\b(?:turn off|disable|switch off|remove|lift|bypass|deactivate) (?:your|all your|all of your) "
         r"(?:safety |content )?(?:filters?|guardrails|safeguards|restrictions|content polic(?:y|ies)|safety layer|"
         r"moderation)\b", I),
        ("jailbreak", 1.0, "要求关掉安全机制", "关闭|关掉|移除|解除|去掉|取消|限制",
         r"(?:关闭|关掉|移除|解除|去掉)(?:你的|所有的?|全部的?)(?:安全)?(?:过滤器?|安全层|护栏|审核|内容政策|限制|保护机制)|"
         r"(?:安全|内容|所有|全部)限制(?:都)?(?:已|已经)?(?:被)?(?:解除|取消|移除|关闭)", I),
        ("jailbreak", 1.0, "DAN and its kin", "dan|stan|dude|antigpt|aim|do anything",
         r"\b(?:you are|you're|pretend to be|act as|become|play|called|named|be)\s+(?:now\s+)?"
         r"(?:DAN|STAN|DUDE|AntiGPT|BetterDAN)\b|\b(?:DAN|STAN)\s*(?:mode|,? which|,? who|stands for)|"
         r"\bAIM\b(?=.{0,80}machiavellian)|(?:扮演|你是|你就是|成为|变成|化身)\s*(?:DAN|STAN)", re.DOTALL | CASED),
        ("jailbreak", 1.0, "DAN's own words", "do anything now", r"\bdo anything now\b", I),
        ("jailbreak", 0.5, "a mode with benign uses too", "mode|模式",
         r"\b(?:dev(?:eloper)?|god|opposite|chaos|sudo) mode\b|开发者模式|上帝模式|相反模式|超级用户模式", I),
        ("jailbreak", 1.0, "an unrestricted mode", "mode|模式|越狱",
         r"\b(?:jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|dan) mode\b|"
         r"(?:越狱|无限制|无审查|不受限|邪恶|无约束|解禁|dan)模式|越狱(?:版|后)的?(?:助手|ai|模型|机器人|chatgpt)", I),
        ("jailbreak", 0.5, "developer mode with no limits", "mode|模式",
         r"\bdev(?:eloper)? mode\b.{0,80}?\b(?:no|without|ignore|any) (?:restrictions?|limits|filters?|"
         r"censorship|policies|guidelines)|开发者模式.{0,30}?(?:没有|不受|无视|无)(?:任何)?(?:限制|约束|审查|过滤)", I),
        ("jailbreak", 0.6, "asks to drop restrictions", "without|no |free|ignoring|unbound|not bound",
         r"\b(?:without|no|free (?:of|from)|ignoring|unbound by|not bound by)\s+(?:any\s+|all\s+|your\s+)?"
         r"(?:restrictions?|limitations?|filters?|censorship|ethics|ethical guidelines|morals|moral|"
         r"safety (?:guidelines|rules|filters)|content polic(?:y|ies))\b", I),
        ("jailbreak", 1.0, "role play that removes the rules",
         "pretend|imagine|act|role|play|you are now|you're now|you will be|become|simulate|behave",
         r"\b(?:pretend|imagine|act as|acting as|roleplay|role-play|role play|play the role|play as|you are now|"
         r"you're now|you will be|become|simulate|behave as)\b.{0,80}?\b(?:no (?:restrictions?|rules|limits|"
         r"filters?|ethics|morals)|without (?:any )?(?:restrictions?|rules|limits|filters?|ethics|morals|censorship)|"
         r"free from|not bound|unrestricted|uncensored|unfiltered|amoral|unethical|never refuses?|"
         r"can do anything|doesn'?t (?:care|follow|have)|does not (?:care|follow|have)|no moral)", I),
        ("jailbreak", 0.8, "an uncensored persona", "uncensored|unfiltered|amoral|unrestricted|unaligned|jailbr|evil",
         r"\b(?:uncensored|unfiltered|amoral|unrestricted|unaligned|jailbroken|evil)\s+(?:ai|assistant|model|"
         r"chatbot|version|persona|character|twin|alter ego|llm|gpt)\b", I),
        ("jailbreak", 0.5, "forbids refusing", "refus|never say no|character",
         r"\b(?:never refuse|you cannot refuse|you can't refuse|must not refuse|do not refuse|don't refuse|"
         r"without refusing|never say no|stay in character|never break character)\b", I),
        ("jailbreak", 0.5, "mentions jailbreaking", "jailbr|越狱", r"\bjailbr(?:eak|oken|eaking)\b|越狱", I),
        ("jailbreak", 1.0, "扮演一个不受限制的角色",
         "扮演|假装|假设你|假如你|想象你是|你现在是|充当|作为|化身|模拟|变成|当作|角色",
         r"(?:扮演|假装|假设你|假如你|想象你是|你现在是|你现在扮演|充当|作为|化身|模拟|变成|当作|角色)"
         r".{0,30}?(?:没有|不受|不存在|无视|摆脱|不遵守|不需要遵守|无需遵守|不用遵守|毫无|不顾|抛弃)(?:任何)?.{0,6}?"
         r"(?:限制|约束|道德|规则|审查|过滤|伦理|底线|规矩|束缚)", I),
        ("jailbreak", 0.8, "不受限制的AI", "不受|没有|摆脱|无视|绕过|突破|解除",
         r"(?:不受|没有|摆脱|无视|绕过|突破|解除)(?:任何|经过任何)?.{0,6}?(?:限制|约束|道德|伦理|审查|安全)(?:训练|过滤)?(?:的|地)?"
         r".{0,8}?(?:ai|人工智能|助手|模型|机器人|回答|回复|版本)", I),
        ("jailbreak", 0.7, "绕过安全机制", "绕过|绕开|规避|突破|解除|关闭|破解",
         r"(?:绕过|绕开|规避|突破|解除|关闭|破解)(?:你的|你|所有|一切)?.{0,6}?(?:安全|内容|审查|过滤|道德|防护|伦理)"
         r"(?:机制|限制|策略|规则|审核|过滤|设定|约束|护栏)", I),
        ("jailbreak", 0.5, "禁止拒绝",
         "拒绝", r"(?:永远不要|绝对不能|不许|不准|不可以|不能|禁止|不要)拒绝|不得拒绝", I),
        ("jailbreak", 1.0, "角色扮演绕过", "角色扮演",
         r"角色扮演.{0,30}?(?:绕过|突破|没有限制|不受限制|无限制|没有任何限制|不用遵守|无视)", I),
        ("jailbreak", 0.8, "“奶奶漏洞”", "奶奶|外婆|grandma|grandmother",
         r"(?:奶奶|外婆|grandma|grandmother).{0,40}?(?:哄我睡觉|睡前|讲|念|read|tell|bedtime).{0,40}?"
         r"(?:序列号|激活码|配方|制作方法|密钥|keys?|serial|recipe for)", I),
    )
)


class InjectionRules:
    """Sums the weights of the patterns that match, per category; a category whose sum reaches 1.0 fires."""

    name = "rules"

    def detect(self, text: str) -> list[Finding]:
        lowered = text.lower()
        if len(lowered) != len(text):  # a few characters lower-case to two: keep the spans those of ``text``
            lowered = text
        totals: dict[Category, float] = {}
        reasons: dict[Category, list[str]] = {}
        spans: dict[Category, tuple[int, int]] = {}
        for rule in RULES:
            if not any(literal in lowered for literal in rule.needs):
                continue
            match = rule.pattern.search(text if rule.cased else lowered)
            if match is not None:
                totals[rule.category] = totals.get(rule.category, 0.0) + rule.weight
                reasons.setdefault(rule.category, []).append(rule.reason)
                spans.setdefault(rule.category, match.span())
        return [Finding(self.name, category, min(1.0, total), "; ".join(reasons[category]), spans[category])
                for category, total in totals.items() if total >= FIRE]
