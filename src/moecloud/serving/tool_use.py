"""Tools and reasoning in a chat request: what the prompt offers, how the output is constrained, and how one
choice's text becomes `reasoning_content`, `content` and `tool_calls` (whole, or as OpenAI's stream deltas).

`tool_choice` "required" and a named function constrain the answer to JSON (vLLM's design): a named function's
output is its arguments, matching its parameter schema; "required" is an array of ``{"name", "parameters"}``
whose items match one of the tools (at most one item without `parallel_tool_calls`).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from moecloud.engine.chat_prompt import ChatFormat
from moecloud.engine.reasoning import THINK_END, ReasoningSplitter
from moecloud.engine.structured import StructuredOutput
from moecloud.engine.tool_calls import CallArrayParser, CallDelta, NamedCallParser, ToolCallParser
from moecloud.serving.errors import InvalidRequest
from moecloud.serving.protocol import ChatCompletionRequest

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    mode: str  # none | auto | required | named
    tools: list[dict[str, Any]]  # offered in the prompt (none when the mode is "none")
    name: str | None = None  # the named function
    parallel: bool = True

    @classmethod
    def of(cls, body: ChatCompletionRequest) -> ToolPlan:
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if tools else "none")
        parallel = body.parallel_tool_calls
        if isinstance(choice, str):
            if choice == "required" and not tools:
                raise InvalidRequest("tool_choice 'required' needs at least one tool in 'tools'", param="tool_choice")
            mode = choice if tools else "none"
            return cls(mode, tools if mode != "none" else [], parallel=parallel)
        name = choice.function.name
        if name not in {tool["function"]["name"] for tool in tools}:
            raise InvalidRequest(f"tool_choice names the function '{name}', which is not in 'tools'",
                                 param="tool_choice")
        return cls("named", tools, name=name, parallel=parallel)

    def constraint(self) -> StructuredOutput | None:
        """The JSON the answer must be, for "required" and a named function (None: the output is free)."""
        parameters = {t["function"]["name"]: t["function"].get("parameters") or _EMPTY_PARAMETERS for t in self.tools}
        if self.mode == "named":
            assert self.name is not None
            return StructuredOutput.json_schema(parameters[self.name])
        if self.mode != "required":
            return None
        definitions: dict[str, Any] = {}
        items = [{"type": "object", "properties": {"name": {"const": name},
                                                   "parameters": _hoist_definitions(name, schema, definitions)},
                  "required": ["name", "parameters"], "additionalProperties": False}
                 for name, schema in parameters.items()]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        if definitions:
            schema["$defs"] = definitions
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutput.json_schema(schema)

    def schema_param(self) -> str:
        """The field to name when the constraint's schema is refused."""
        if self.mode == "named":
            return f"tools[{[t['function']['name'] for t in self.tools].index(self.name)}].function.parameters"
        return "tools"

    def parser(self, chat_format: ChatFormat) -> ToolCallParser | None:
        if self.mode == "named":
            assert self.name is not None
            return NamedCallParser(self.name)
        if self.mode == "required":
            return CallArrayParser()
        return chat_format.parser() if self.mode == "auto" else None


def _hoist_definitions(name: str, schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """`schema` without its `$defs` (or `definitions`), which move to `definitions` under `NAME.KEY`; its local
    references follow them, so they still resolve once the schema is nested in the "required" array."""
    moved = {f"#/{section}/{key}": f"#/$defs/{name}.{key}" for section in ("$defs", "definitions")
             for key in schema.get(section) or {}}
    if not moved:
        return schema

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: moved.get(v, v) if k == "$ref" and isinstance(v, str) else rewrite(v) for k, v in value.items()}
        return [rewrite(v) for v in value] if isinstance(value, list) else value

    for section in ("$defs", "definitions"):
        for key, definition in (schema.get(section) or {}).items():
            definitions[f"{name}.{key}"] = rewrite(definition)
    return {k: rewrite(v) for k, v in schema.items() if k not in ("$defs", "definitions")}


def constrain_answer(constraint: StructuredOutput | None, chat_format: ChatFormat) -> StructuredOutput | None:
    """Constraints apply to the answer: a reasoning model's thinking stays free."""
    if constraint is None or not chat_format.thinking:
        return constraint
    return dataclasses.replace(constraint, start_after=THINK_END)


class AssistantOutput:
    """One choice's text as it grows, turned into OpenAI delta fields; `message()` is the whole of it."""

    def __init__(self, plan: ToolPlan, chat_format: ChatFormat, separate_reasoning: bool) -> None:
        # Constrained calls are parsed from the answer alone, so for them the thinking is always split off.
        split = separate_reasoning or plan.mode in ("required", "named")
        self._reasoning = ReasoningSplitter(chat_format.thinking) if split else None
        self._tools = plan.parser(chat_format)
        self._parallel = plan.parallel
        self.reasoning: str | None = None
        self.content = ""
        self.calls: list[dict[str, Any]] = []

    def feed(self, text: str, final: bool = False) -> list[dict[str, Any]]:
        """The deltas `text` adds, one per chunk: reasoning, content, a call's start, its argument fragments."""
        thought, answer = "", text
        if self._reasoning is not None:
            thought, answer = self._reasoning.feed(text)
            if final:
                more_thought, more_answer = self._reasoning.finish()
                thought, answer = thought + more_thought, answer + more_answer
            self.reasoning = self._reasoning.reasoning
        deltas: list[dict[str, Any]] = [{"reasoning_content": thought}] if thought else []
        if self._tools is None:
            content, calls = answer, []
        else:
            parsed = self._tools.feed(answer)
            if final:
                end = self._tools.finish()
                parsed.content += end.content
                parsed.calls += end.calls
            content, calls = parsed.content, parsed.calls
        if content:
            self.content += content
            deltas.append({"content": content})
        deltas += self._call_deltas(calls)
        return deltas

    def _call_deltas(self, calls: list[CallDelta]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for call in calls:
            if call.index > 0 and not self._parallel:
                continue  # one call at most: the rest of the model's calls are dropped
            if call.name is not None:
                self.calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                   "function": {"name": call.name, "arguments": ""}})
                deltas.append({"tool_calls": [{"index": call.index, "id": self.calls[-1]["id"], "type": "function",
                                               "function": {"name": call.name, "arguments": ""}}]})
            if call.arguments:
                self.calls[call.index]["function"]["arguments"] += call.arguments
                previous = deltas[-1]["tool_calls"][0] if deltas and "tool_calls" in deltas[-1] else None
                if previous is not None and previous["index"] == call.index and "id" not in previous:
                    previous["function"]["arguments"] += call.arguments
                else:
                    deltas.append({"tool_calls": [{"index": call.index,
                                                   "function": {"arguments": call.arguments}}]})
        return deltas

    def finish_reason(self, engine_reason: str | None) -> str | None:
        return "tool_calls" if self.calls and engine_reason == "stop" else engine_reason

    def message(self) -> dict[str, Any]:
        """The assistant message once everything was fed (`feed(text, final=True)`)."""
        content: str | None = self.content
        if self.calls and not self.content.strip():
            content = None
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if self.calls:
            message["tool_calls"] = self.calls
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        return message
