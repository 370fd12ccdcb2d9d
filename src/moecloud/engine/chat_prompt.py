"""Tools and tool-call history in the prompt, with the checkpoint's own chat template where it can render them.

A template that writes DeepSeek-V3's tool-call tokens (``<｜tool▁call▁begin｜>``) and renders assistant
`tool_calls` and `role: "tool"` results gets the messages as they are, and `tools` too if it renders them;
if it does not render `tools`, a system message describes them in that same format. Any other template gets
the documented fallback: the tools described in a system message, calls written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, and the history rewritten in that form (an
assistant's calls as its text, each tool result as a user message), so a template that knows only system,
user and assistant messages still renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from moecloud.engine.reasoning import opens_thinking
from moecloud.engine.tokenizer import ChatTemplateError, Tokenizer
from moecloud.engine.tool_calls import (
    CALL_BEGIN,
    CALL_END,
    CALL_SEP,
    CALLS_BEGIN,
    CALLS_END,
    FENCE_CLOSE,
    FENCE_OPEN,
    TAG_CLOSE,
    TAG_OPEN,
    DeepSeekToolParser,
    TaggedJsonToolParser,
    ToolCallParser,
)

_PROBE_NAME, _PROBE_ARGUMENTS, _PROBE_RESULT = "moecloud_probe_fn", '{"probe": 17}', "moecloud probe result"


@dataclass(frozen=True)
class ChatFormat:
    """How one checkpoint's template handles tools and thinking, found once by rendering probe conversations."""

    dialect: str  # "deepseek": the template's own tool-call tokens; "json": the fallback
    renders_tools: bool  # the template writes a `tools` list itself
    thinking: bool  # the generation prompt opens a <think> block

    @classmethod
    def probe(cls, tokenizer: Tokenizer) -> ChatFormat:
        template = tokenizer.chat_template or ""
        user = [{"role": "user", "content": "hi"}]
        deepseek = CALL_BEGIN in template and _renders_history(tokenizer)
        tool = {"type": "function", "function": {"name": _PROBE_NAME, "parameters": {"type": "object"}}}
        renders_tools = deepseek and _renders_tools(tokenizer, user, [tool])
        try:
            thinking = opens_thinking(tokenizer.apply_chat_template(user, add_generation_prompt=True))
        except ChatTemplateError:
            thinking = False
        return cls("deepseek" if deepseek else "json", renders_tools, thinking)

    def parser(self) -> ToolCallParser:
        return DeepSeekToolParser() if self.dialect == "deepseek" else TaggedJsonToolParser()

    def render(self, tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               add_generation_prompt: bool = True) -> str:
        """The prompt for `messages` (OpenAI shape: assistant `tool_calls`, `tool` results) offering `tools`."""
        if self.dialect == "json":
            messages = [_fallback_message(m) for m in messages]
        if tools and not self.renders_tools:
            messages = _with_system(messages, describe_tools(tools, self.dialect))
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                             tools=tools if tools and self.renders_tools else None)


def _renders_tools(tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
    try:
        return _PROBE_NAME in tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
    except ChatTemplateError:
        return False


def _renders_history(tokenizer: Tokenizer) -> bool:
    call = {"id": "call_probe", "type": "function", "function": {"name": _PROBE_NAME, "arguments": _PROBE_ARGUMENTS}}
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_probe", "content": _PROBE_RESULT}]
    try:
        text = tokenizer.apply_chat_template(history, add_generation_prompt=True)
    except ChatTemplateError:
        return False
    return all(probe in text for probe in (_PROBE_NAME, _PROBE_ARGUMENTS, _PROBE_RESULT))


def describe_tools(tools: list[dict[str, Any]], dialect: str) -> str:
    """The system text that offers `tools` to a model whose template does not render them."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    if dialect == "deepseek":
        example = (f"{CALLS_BEGIN}{CALL_BEGIN}function{CALL_SEP}FUNCTION_NAME\n{FENCE_OPEN}ARGUMENTS_AS_JSON"
                   f"{FENCE_CLOSE}{CALL_END}{CALLS_END}")
    else:
        example = f'{TAG_OPEN}{{"name": "FUNCTION_NAME", "arguments": ARGUMENTS_AS_JSON}}{TAG_CLOSE}'
    return ("## Tools\nYou can call these functions (JSON schemas of their parameters included):\n"
            f"{listed}\n\nTo call one, write exactly:\n{example}\n"
            "Call several by writing several calls. Otherwise, answer normally.")


def fallback_call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        json.loads(arguments)
    except ValueError:
        arguments = json.dumps(arguments)  # not JSON: kept as a JSON string, so the line still parses
    return f'{TAG_OPEN}{{"name": {json.dumps(function.get("name", ""))}, "arguments": {arguments}}}{TAG_CLOSE}'


def _fallback_message(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] == "tool":
        result = {"tool_call_id": message.get("tool_call_id"), "content": message.get("content") or ""}
        return {"role": "user", "content": f"<tool_response>{json.dumps(result, ensure_ascii=False)}</tool_response>"}
    if message["role"] == "assistant" and message.get("tool_calls"):
        calls = "".join(fallback_call_text(call) for call in message["tool_calls"])
        return {"role": "assistant", "content": (message.get("content") or "") + calls}
    return {"role": message["role"], "content": message.get("content") or ""}


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{text}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
