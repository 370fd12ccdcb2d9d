// English and Chinese. The language is the one chosen last (kept in localStorage), else Chinese when the
// browser lists a Chinese locale before any English one, else English.

const STRINGS = {
  en: {
    language: "Language", navigation: "Console pages", loading: "Loading…", none: "None yet.", field: "field",
    updated: "Updated {time}",
    "nav.gallery": "Gallery", "nav.keys": "Keys", "nav.tenants": "Tenants & credit", "nav.usage": "Usage & billing",
    "nav.playground": "Playground", "nav.operations": "Operations",
    "role.admin": "Administrator", "role.tenant": "Tenant", sign_out: "Sign out",
    "sign_in.title": "Sign in to moecloud", "sign_in.hint": "Use the admin key or one of your tenant's API keys.",
    "sign_in.key": "API key", "sign_in.placeholder": "sk-…", "sign_in.submit": "Sign in",
    "sign_in.refused": "That key was refused: it is wrong, revoked or expired.",
    "gallery.hint": "Every checkpoint on this host and every deployed model. Deploy, scale and stop from here.",
    "gallery.empty": "No checkpoints or deployments yet.", "gallery.architecture": "Architecture",
    "gallery.size": "Size", "gallery.params": "Parameters (total / active)", "gallery.context": "Context length",
    "gallery.quantization": "Quantization", "gallery.layers_experts": "Layers / routed experts",
    "gallery.price": "Price per 1M (miss / hit / output)", "gallery.quality": "Quality",
    "gallery.no_quality": "not evaluated", "gallery.deployment": "Deployment", "gallery.kind": "Kind",
    "gallery.status": "Status", "gallery.replicas": "Replicas", "gallery.time_to_ready": "Click to ready",
    "gallery.min": "Min", "gallery.max": "Max", "gallery.name": "Deployment name", "gallery.model": "Model name",
    "gallery.deploy": "Deploy", "gallery.deploy_title": "Deploy this checkpoint", "gallery.scale": "Scale", "gallery.stop": "Stop",
    "gallery.confirm_stop": "Stop and remove the deployment {name}?", "gallery.starting_replica": "a starting replica",
    "gallery.waiting": "waiting {seconds} s", "gallery.settled.ready": "ready in {seconds} s",
    "gallery.settled.stopped": "stopped in {seconds} s", "gallery.settled.failed": "failed after {seconds} s",
    "gallery.settled.remote": "added in {seconds} s",
    "status.starting": "starting", "status.ready": "ready", "status.scaling": "scaling", "status.failed": "failed",
    "status.stopped": "stopped", "status.remote": "remote",
    "state.starting": "starting", "state.ready": "ready", "state.unhealthy": "unhealthy",
    "keys.create": "Create a key", "keys.create_button": "Create key", "keys.tenant": "Tenant", "keys.name": "Name",
    "keys.models": "Models", "keys.models_hint": "comma-separated; empty: every model", "keys.concurrency": "Concurrency",
    "keys.priority": "Priority", "keys.expires": "Expires", "keys.prefix": "Key", "keys.limits": "RPM / TPM / concurrency",
    "keys.status": "Status", "keys.all_models": "all models", "keys.revoke": "Revoke",
    "keys.confirm_revoke": "Revoke the key {name}? Clients using it stop working at once.",
    "keys.shown_once": "Your new key. It is shown this once: copy it now.", "keys.copy": "Copy",
    "keys.copied": "Copied.", "keys.select_copy": "Selected: press Ctrl+C to copy.",
    "keys.state.active": "active", "keys.state.revoked": "revoked", "keys.state.expired": "expired",
    "tenants.create": "Create a tenant", "tenants.create_button": "Create tenant", "tenants.name": "Tenant",
    "tenants.trial_credit": "Trial credit", "tenants.weight": "Weight", "tenants.balance": "Balance",
    "tenants.limits": "RPM / TPM / weight", "tenants.credit": "Add credit", "tenants.amount": "Amount",
    "tenants.note": "Note", "tenants.add_credit": "Add", "tenants.save": "Save",
    "tenants.saved": "Saved the limits of {name}.", "tenants.credited": "Added {amount} to {name}.",
    "tenants.created": "Created the tenant {name}.",
    "usage.since": "From", "usage.until": "To", "usage.tenant": "Tenant", "usage.all_tenants": "All tenants",
    "usage.show": "Show", "usage.export": "Export CSV", "usage.requests": "Requests",
    "usage.prompt_tokens": "Prompt tokens", "usage.cache_hit_share": "Cache-hit share",
    "usage.completion_tokens": "Completion tokens", "usage.cost": "Cost", "usage.balance": "Balance",
    "usage.held": "Held by open requests", "usage.tokens_per_day": "Tokens per day", "usage.cost_per_day": "Cost per day",
    "usage.cached": "cached prompt", "usage.uncached": "uncached prompt", "usage.completion": "completion",
    "usage.by_model": "Cost by model", "usage.by_key": "Cost by key", "usage.hit": "hit", "usage.none": "No usage in this range.",
    "usage.pick_tenant": "Choose a tenant to see its balance and open holds.",
    "playground.key": "API key (a tenant's key: chats are billed to it)", "playground.key_placeholder": "sk-…",
    "playground.need_key": "Paste a tenant's API key, or make one below, to chat.",
    "playground.mint": "New key for this tenant",
    "playground.minted": "A key of {tenant} for the playground, valid {hours} h (listed under Keys).", "playground.model": "Model",
    "playground.no_models": "This key may use no deployed model.", "playground.system": "System prompt",
    "playground.system_placeholder": "You are a helpful assistant.", "playground.input_placeholder": "Say something…",
    "playground.send": "Send", "playground.stop": "Stop", "playground.clear": "Clear", "playground.code": "This request as code",
    "playground.user": "You", "playground.assistant": "Assistant", "playground.system_role": "System",
    "playground.streaming": "Streaming…", "playground.stopped": "Stopped.",
    "playground.done": "Done: {prompt} prompt + {completion} completion tokens ({finish}).",
    "playground.done_no_usage": "Done.",
    "operations.queue_depth": "Queued", "operations.running": "Running", "operations.wait_p50": "Queue wait p50",
    "operations.wait_p95": "Queue wait p95", "operations.ttft_p50": "TTFT p50", "operations.ttft_p95": "TTFT p95",
    "operations.ttft_p99": "TTFT p99", "operations.total_p50": "Latency p50", "operations.total_p95": "Latency p95",
    "operations.total_p99": "Latency p99", "operations.tokens_per_second": "Tokens/s (5 min)",
    "operations.requests": "Requests (5 min)", "operations.expert_load": "Expert load per layer",
    "operations.no_workers": "No local workers are running.", "operations.heatmap_title": "Tokens routed to each expert, {replica}",
    "operations.heatmap_caption": "experts 0 … {last}; the darkest cell: {peak} tokens",
    "operations.scale_events": "Autoscaler events", "operations.at": "When", "operations.deployment": "Deployment",
    "operations.change": "Replicas", "operations.reason": "Reason", "operations.audit": "Audit log",
    "operations.actor": "Actor", "operations.action": "Action", "operations.target": "Target", "operations.details": "Details",
    "operations.verified": "Audit chain verified: {rows} rows intact.", "operations.broken": "Audit chain broken: {problems}",
    "operations.verify_again": "Verify again",
  },
  zh: {
    language: "语言", navigation: "控制台页面", loading: "加载中…", none: "暂无。", field: "字段", updated: "更新于 {time}",
    "nav.gallery": "模型库", "nav.keys": "密钥", "nav.tenants": "租户与额度", "nav.usage": "用量与账单",
    "nav.playground": "体验场", "nav.operations": "运维",
    "role.admin": "管理员", "role.tenant": "租户", sign_out: "退出登录",
    "sign_in.title": "登录 moecloud", "sign_in.hint": "使用管理员密钥或租户的 API 密钥。",
    "sign_in.key": "API 密钥", "sign_in.placeholder": "sk-…", "sign_in.submit": "登录",
    "sign_in.refused": "密钥被拒绝：密钥错误、已吊销或已过期。",
    "gallery.hint": "本机的所有检查点和已部署的模型。可在此部署、扩缩容和停止。",
    "gallery.empty": "还没有检查点或部署。", "gallery.architecture": "架构", "gallery.size": "大小",
    "gallery.params": "参数量（总 / 激活）", "gallery.context": "上下文长度", "gallery.quantization": "量化",
    "gallery.layers_experts": "层数 / 路由专家", "gallery.price": "每百万 token 价格（未命中 / 命中 / 输出）",
    "gallery.quality": "质量", "gallery.no_quality": "未评测", "gallery.deployment": "部署", "gallery.kind": "类型",
    "gallery.status": "状态", "gallery.replicas": "副本", "gallery.time_to_ready": "点击到就绪",
    "gallery.min": "最少", "gallery.max": "最多", "gallery.name": "部署名称", "gallery.model": "模型名称",
    "gallery.deploy": "部署", "gallery.deploy_title": "部署此检查点", "gallery.scale": "扩缩容", "gallery.stop": "停止",
    "gallery.confirm_stop": "停止并删除部署 {name}？", "gallery.starting_replica": "启动中的副本",
    "gallery.waiting": "已等待 {seconds} 秒", "gallery.settled.ready": "{seconds} 秒后就绪",
    "gallery.settled.stopped": "{seconds} 秒后停止", "gallery.settled.failed": "{seconds} 秒后失败",
    "gallery.settled.remote": "{seconds} 秒后添加",
    "status.starting": "启动中", "status.ready": "就绪", "status.scaling": "扩缩容中", "status.failed": "失败",
    "status.stopped": "已停止", "status.remote": "远程",
    "state.starting": "启动中", "state.ready": "就绪", "state.unhealthy": "不健康",
    "keys.create": "创建密钥", "keys.create_button": "创建密钥", "keys.tenant": "租户", "keys.name": "名称",
    "keys.models": "模型", "keys.models_hint": "逗号分隔；留空表示所有模型", "keys.concurrency": "并发",
    "keys.priority": "优先级", "keys.expires": "过期时间", "keys.prefix": "密钥", "keys.limits": "RPM / TPM / 并发",
    "keys.status": "状态", "keys.all_models": "所有模型", "keys.revoke": "吊销",
    "keys.confirm_revoke": "吊销密钥 {name}？使用它的客户端将立即失效。",
    "keys.shown_once": "新密钥只显示这一次：请立即复制。", "keys.copy": "复制", "keys.copied": "已复制。",
    "keys.select_copy": "已选中：按 Ctrl+C 复制。",
    "keys.state.active": "有效", "keys.state.revoked": "已吊销", "keys.state.expired": "已过期",
    "tenants.create": "创建租户", "tenants.create_button": "创建租户", "tenants.name": "租户",
    "tenants.trial_credit": "试用额度", "tenants.weight": "权重", "tenants.balance": "余额",
    "tenants.limits": "RPM / TPM / 权重", "tenants.credit": "充值", "tenants.amount": "金额", "tenants.note": "备注",
    "tenants.add_credit": "充值", "tenants.save": "保存", "tenants.saved": "已保存 {name} 的限额。",
    "tenants.credited": "已为 {name} 充值 {amount}。", "tenants.created": "已创建租户 {name}。",
    "usage.since": "从", "usage.until": "到", "usage.tenant": "租户", "usage.all_tenants": "所有租户",
    "usage.show": "查看", "usage.export": "导出 CSV", "usage.requests": "请求数", "usage.prompt_tokens": "输入 token",
    "usage.cache_hit_share": "缓存命中率", "usage.completion_tokens": "输出 token", "usage.cost": "费用",
    "usage.balance": "余额", "usage.held": "进行中请求的冻结额", "usage.tokens_per_day": "每日 token",
    "usage.cost_per_day": "每日费用", "usage.cached": "缓存命中的输入", "usage.uncached": "未命中的输入",
    "usage.completion": "输出", "usage.by_model": "按模型的费用", "usage.by_key": "按密钥的费用", "usage.hit": "命中",
    "usage.none": "此区间内没有用量。", "usage.pick_tenant": "选择一个租户以查看其余额和冻结额。",
    "playground.key": "API 密钥（租户的密钥：对话计费到该租户）", "playground.key_placeholder": "sk-…",
    "playground.need_key": "粘贴一个租户的 API 密钥，或在下方新建一个，即可对话。",
    "playground.mint": "为此租户新建密钥",
    "playground.minted": "已为 {tenant} 新建体验场密钥，有效期 {hours} 小时（见“密钥”页）。", "playground.model": "模型",
    "playground.no_models": "此密钥没有可用的已部署模型。", "playground.system": "系统提示词",
    "playground.system_placeholder": "你是一个乐于助人的助手。", "playground.input_placeholder": "说点什么…",
    "playground.send": "发送", "playground.stop": "停止", "playground.clear": "清空", "playground.code": "此请求的代码",
    "playground.user": "你", "playground.assistant": "助手", "playground.system_role": "系统",
    "playground.streaming": "流式输出中…", "playground.stopped": "已停止。",
    "playground.done": "完成：输入 {prompt} + 输出 {completion} 个 token（{finish}）。", "playground.done_no_usage": "完成。",
    "operations.queue_depth": "排队中", "operations.running": "运行中", "operations.wait_p50": "排队等待 p50",
    "operations.wait_p95": "排队等待 p95", "operations.ttft_p50": "首 token 延迟 p50", "operations.ttft_p95": "首 token 延迟 p95",
    "operations.ttft_p99": "首 token 延迟 p99", "operations.total_p50": "总延迟 p50", "operations.total_p95": "总延迟 p95",
    "operations.total_p99": "总延迟 p99", "operations.tokens_per_second": "每秒 token（5 分钟）",
    "operations.requests": "请求数（5 分钟）", "operations.expert_load": "各层专家负载",
    "operations.no_workers": "没有运行中的本地工作进程。", "operations.heatmap_title": "{replica} 路由到各专家的 token 数",
    "operations.heatmap_caption": "专家 0 … {last}；最深的格子：{peak} 个 token",
    "operations.scale_events": "自动扩缩容事件", "operations.at": "时间", "operations.deployment": "部署",
    "operations.change": "副本", "operations.reason": "原因", "operations.audit": "审计日志", "operations.actor": "操作者",
    "operations.action": "操作", "operations.target": "对象", "operations.details": "详情",
    "operations.verified": "审计链校验通过：{rows} 行完整。", "operations.broken": "审计链已损坏：{problems}",
    "operations.verify_again": "重新校验",
  },
};

let current = "en";

export function initialLanguage() {
  const chosen = window.localStorage.getItem("moecloud.language");
  if (chosen && STRINGS[chosen]) return chosen;
  for (const locale of navigator.languages || [navigator.language || "en"]) {
    if (locale.toLowerCase().startsWith("zh")) return "zh";
    if (locale.toLowerCase().startsWith("en")) return "en";
  }
  return "en";
}

// remember: the user chose it (the switch); the browser's preference is not stored, so it can still change.
export function setLanguage(language, remember = false) {
  current = STRINGS[language] ? language : "en";
  if (remember) window.localStorage.setItem("moecloud.language", current);
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  document.title = current === "zh" ? "moecloud 控制台" : "moecloud console";
}

// t("gallery.waiting", {seconds: 3}) -> "waiting 3 s"; an unknown key falls back to English, then to itself.
export function t(key, values = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (match, name) => (name in values ? String(values[name]) : match));
}

export const LANGUAGES = Object.keys(STRINGS);
