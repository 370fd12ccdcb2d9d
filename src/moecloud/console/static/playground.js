// Playground: chat with any model the key may use, streamed, with the sampling parameters and a system prompt,
// and the same request as curl and Python. A tenant session chats as its own key (the cookie); an admin pastes a
// tenant key, as the gateway bills every chat to a tenant.

import { api, clear, errorText, h, send } from "./api.js";
import { t } from "./i18n.js";

const PARAMETERS = [ // name, input attributes, default
  ["temperature", { type: "number", min: 0, max: 2, step: 0.1 }, "0.7"],
  ["top_p", { type: "number", min: 0, max: 1, step: 0.05 }, "1"],
  ["max_tokens", { type: "number", min: 1, step: 1 }, "64"],
  ["presence_penalty", { type: "number", min: -2, max: 2, step: 0.1 }, "0"],
  ["frequency_penalty", { type: "number", min: -2, max: 2, step: 0.1 }, "0"],
  ["seed", { type: "number", step: 1 }, ""],
];
const INTEGERS = new Set(["max_tokens", "seed"]);

const chat = { messages: [], key: "" }; // the conversation survives leaving the page

function requestBody(model, system, parameters, messages) {
  const body = { model, messages: [...(system ? [{ role: "system", content: system }] : []), ...messages] };
  for (const [name, value] of Object.entries(parameters)) {
    if (value === "") continue;
    body[name] = INTEGERS.has(name) ? Number.parseInt(value, 10) : Number(value);
  }
  return body;
}

function curl(body) {
  const json = JSON.stringify({ ...body, stream: true }, null, 2).replaceAll("'", "'\\''");
  return `curl ${window.location.origin}/v1/chat/completions \\\n  -H "Authorization: Bearer $MOECLOUD_API_KEY" \\\n`
    + `  -H "Content-Type: application/json" \\\n  -d '${json}'`;
}

function python(body) {
  const { model, messages, ...options } = body;
  const lines = [
    "from openai import OpenAI", "",
    `client = OpenAI(base_url="${window.location.origin}/v1", api_key=os.environ["MOECLOUD_API_KEY"])`,
    "stream = client.chat.completions.create(",
    `    model=${JSON.stringify(model)},`,
    `    messages=${JSON.stringify(messages)},`,
    ...Object.entries(options).map(([name, value]) => `    ${name}=${JSON.stringify(value)},`),
    "    stream=True,", ")", "for chunk in stream:",
    "    if chunk.choices:", "        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)",
  ];
  return ["import os", ...lines].join("\n");
}

// Server-sent events from a fetch body: calls onData with each parsed `data:` JSON until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

function bubble(message) {
  return h("div", { class: `message ${message.role}`, "data-role": message.role },
    h("span", { class: "role" }, t(`playground.${message.role}`)), h("div", { class: "content" }, message.content));
}

// An admin chats as a tenant: paste one of its keys, or mint a short-lived one here (audited like any key).
const MINTED_KEY_HOURS = 12;

async function mintForm(keyField, loadModels) {
  const tenants = await api("GET", "/admin/tenants");
  const tenant = h("select", { id: "playground-tenant", "aria-label": t("keys.tenant") },
    tenants.map((one) => h("option", { value: one.name }, one.name)));
  const message = h("p", { class: "hint", role: "status" });
  const mint = h("button", { type: "button", class: "secondary", id: "playground-mint", onclick: async () => {
    try {
      const made = await api("POST", "/admin/keys", { json: { tenant: tenant.value, name: "playground",
        expires_at: new Date(Date.now() + MINTED_KEY_HOURS * 3600_000).toISOString() } });
      keyField.value = made.key;
      message.textContent = t("playground.minted", { tenant: tenant.value, hours: MINTED_KEY_HOURS });
      await loadModels();
    } catch (error) {
      message.textContent = errorText(error, t);
    }
  } }, t("playground.mint"));
  return tenants.length ? h("div", { class: "mint" }, h("div", { class: "row" }, tenant, mint), message) : null;
}

export async function render(root, context) {
  const admin = context.session.role === "admin";
  const keyField = admin ? h("input", { id: "playground-key", type: "password", autocomplete: "off", value: chat.key,
    placeholder: t("playground.key_placeholder") }) : null;
  const modelSelect = h("select", { id: "playground-model", name: "model" });
  const status = h("p", { class: "notice", role: "status", id: "playground-status" });
  const loadModels = async () => {
    chat.key = keyField ? keyField.value.trim() : "";
    if (admin && !chat.key) {
      status.textContent = t("playground.need_key");
      return;
    }
    try {
      const models = await api("GET", "/v1/models", { key: chat.key || undefined });
      const current = modelSelect.value;
      clear(modelSelect, models.data.map((model) => h("option", { value: model.id }, model.id)));
      if (current) modelSelect.value = current;
      status.className = "notice";
      status.textContent = models.data.length ? "" : t("playground.no_models");
    } catch (error) {
      status.className = "notice error";
      status.textContent = errorText(error, t);
    }
  };
  if (keyField) keyField.addEventListener("change", loadModels);
  const minting = admin ? await mintForm(keyField, loadModels) : null;

  const system = h("textarea", { id: "playground-system", rows: 2, placeholder: t("playground.system_placeholder") });
  const parameterInputs = Object.fromEntries(PARAMETERS.map(([name, attributes, value]) =>
    [name, h("input", { ...attributes, name, value, class: "small", id: `param-${name}` })]));
  const thread = h("div", { class: "thread", id: "thread" }, chat.messages.map(bubble));
  const prompt = h("textarea", { id: "playground-input", rows: 3, placeholder: t("playground.input_placeholder") });
  const code = h("pre", { class: "code", id: "playground-code" });
  let language = "curl";
  const current = (messages) => requestBody(modelSelect.value, system.value.trim(),
    Object.fromEntries(Object.entries(parameterInputs).map(([name, input]) => [name, input.value.trim()])), messages);
  const showCode = () => {
    const draft = prompt.value.trim();
    const body = current([...chat.messages, ...(draft ? [{ role: "user", content: draft }] : [])]);
    code.textContent = language === "curl" ? curl(body) : python(body);
  };
  for (const input of [system, prompt, modelSelect, ...Object.values(parameterInputs)]) {
    input.addEventListener("input", showCode);
  }
  let controller = null;
  const sendButton = h("button", { id: "playground-send", type: "submit" }, t("playground.send"));
  const stopButton = h("button", { id: "playground-stop", type: "button", class: "secondary", disabled: true,
    onclick: () => controller && controller.abort() }, t("playground.stop"));

  const form = h("form", { class: "composer", onsubmit: async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    const user = { role: "user", content: text };
    const body = { ...current([...chat.messages, user]), stream: true, stream_options: { include_usage: true } };
    chat.messages.push(user);
    thread.append(bubble(user));
    prompt.value = "";
    const answer = { role: "assistant", content: "" };
    const answerBubble = bubble(answer);
    answerBubble.classList.add("streaming");
    const content = answerBubble.querySelector(".content");
    thread.append(answerBubble);
    controller = new AbortController();
    sendButton.disabled = true;
    stopButton.disabled = false;
    status.className = "notice";
    status.textContent = t("playground.streaming");
    let usage = null, finish = null;
    try {
      const response = await send("POST", "/v1/chat/completions",
        { json: body, key: chat.key || undefined, signal: controller.signal });
      await readEvents(response, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            answer.content += choice.delta.content;
            content.textContent = answer.content;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      });
      status.textContent = usage ? t("playground.done", { prompt: usage.prompt_tokens,
        completion: usage.completion_tokens, finish: finish || "?" }) : t("playground.done_no_usage");
    } catch (error) {
      status.className = "notice error";
      status.textContent = error.name === "AbortError" ? t("playground.stopped") : errorText(error, t);
    } finally {
      answerBubble.classList.remove("streaming");
      answerBubble.dataset.finish = finish || "";
      if (answer.content) chat.messages.push(answer);
      controller = null;
      sendButton.disabled = false;
      stopButton.disabled = true;
      showCode();
    }
  } }, prompt, h("div", { class: "row" }, sendButton, stopButton, h("button", { type: "button", class: "secondary",
    id: "playground-clear", onclick: () => { chat.messages = []; clear(thread); showCode(); } }, t("playground.clear"))));

  const tabs = h("div", { class: "tabs" }, ["curl", "python"].map((name) => h("button", { type: "button",
    class: "secondary", "data-code": name, onclick: () => { language = name; showCode(); } }, name)));
  context.onLeave(() => controller && controller.abort());
  clear(root, h("h1", {}, t("nav.playground")), h("div", { class: "playground" },
    h("section", { class: "card" }, keyField ? h("label", {}, t("playground.key"), keyField) : null, minting,
      h("label", {}, t("playground.model"), modelSelect), h("label", {}, t("playground.system"), system),
      h("div", { class: "parameters" }, PARAMETERS.map(([name]) => h("label", {}, name, parameterInputs[name])))),
    h("section", { class: "card chat" }, thread, form, status),
    h("section", { class: "card" }, h("h2", {}, t("playground.code")), tabs, code)));
  await loadModels();
  showCode();
}
