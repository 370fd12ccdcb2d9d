"""The Responses API request (POST /v1/responses) and its translation into a chat completions request.

The worker answers a Responses request through the chat pipeline, so it supports (and validates) what chat does:
the chat request is validated by chat's own schema, and a refusal there is renamed to the Responses field it came
from (`messages[2].content` -> `input[1].content`, `max_completion_tokens` -> `max_output_tokens`). Nothing is
stored: the stateful fields are refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from moecloud.serving.protocol import ChatCompletionRequest, Text
from moecloud.web.errors import APIError, InvalidRequest, UnsupportedParameter, invalid_request

MAX_METADATA_PAIRS = 16
# vLLM-style sampling extensions a Responses request may carry too (OpenAI's Responses API has none of them)
SAMPLING_EXTENSIONS = ("seed", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                       "stop", "ignore_eos")
NOT_STORED = "is not supported: this server does not store responses"


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class InputPart(_Schema):
    type: Text
    text: Text | None = None


class InputItem(_Schema):
    """One `input` item; which fields it needs depends on `type` (an easy message has no type)."""

    type: Text = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: Text | list[InputPart] | None = None
    call_id: Text | None = None
    name: Text | None = None
    arguments: Text | None = None
    output: Text | list[InputPart] | None = None


class TextFormat(_Schema):
    type: Literal["text", "json_object", "json_schema"]
    name: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: Text | None = None
    strict: StrictBool | None = None


class TextConfig(_Schema):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class FunctionTool(_Schema):
    type: Text
    name: Text | None = None
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolChoiceObject(_Schema):
    type: Text
    name: Text | None = None


class StreamOptions(_Schema):
    include_obfuscation: StrictBool | None = None  # padding against side channels: nothing to pad here


class Reasoning(_Schema):
    effort: Text | None = None
    summary: Text | None = None


MetadataKey = Annotated[Text, Field(max_length=64)]
MetadataValue = Annotated[Text, Field(max_length=512)]


class ResponsesRequest(_Schema):
    # extra fields are kept so that the sampling extensions can be handed on; any other is ignored
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)

    model: Text
    input: Text | Annotated[list[InputItem], Field(min_length=1)]
    instructions: Text | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: StrictBool | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)] | None = None
    user: Text | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    store: StrictBool | None = None
    # accepted and ignored: routing and caching hints with nothing to act on here
    safety_identifier: Text | None = None
    prompt_cache_key: Text | None = None
    service_tier: Text | None = None
    # refused when set: the stateful and hosted features
    previous_response_id: Text | None = None
    conversation: Text | dict[str, Any] | None = None
    background: StrictBool | None = None
    prompt: dict[str, Any] | None = None
    include: list[Text] | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: StrictInt | None = None
    max_tool_calls: StrictInt | None = None

    def refuse_unsupported(self) -> None:
        """A 400 naming the first field set to something this server cannot honour."""
        stateful = {"previous_response_id": self.previous_response_id, "conversation": self.conversation,
                    "store": self.store, "background": self.background}
        for name, value in stateful.items():
            if value:
                raise UnsupportedParameter(name, NOT_STORED)
        reasoning = self.reasoning or Reasoning()
        refused = {"prompt": self.prompt, "include": self.include, "reasoning.effort": reasoning.effort,
                   "reasoning.summary": reasoning.summary, "top_logprobs": self.top_logprobs,
                   "max_tool_calls": self.max_tool_calls, "truncation": self.truncation == "auto",
                   "text.verbosity": self.text is not None and self.text.verbosity not in (None, "medium")}
        for name, value in refused.items():
            if value:
                raise UnsupportedParameter(name)
        for i, tool in enumerate(self.tools or []):
            if tool.type != "function":
                raise UnsupportedParameter(f"tools[{i}].type", f"is '{tool.type}': only function tools are "
                                                               "supported (no built-in tools)")
            if not tool.name:
                raise InvalidRequest("a function tool needs a name", param=f"tools[{i}].name")
        choice = self.tool_choice
        if isinstance(choice, ToolChoiceObject):
            if choice.type != "function":
                raise UnsupportedParameter("tool_choice", f"of type '{choice.type}' is not supported: only "
                                                          "'auto', 'none', 'required' and a named function are")
            if not choice.name:
                raise InvalidRequest("a function tool_choice needs a name", param="tool_choice.name")

    def to_chat(self) -> tuple[ChatCompletionRequest, ChatFieldNames]:
        """The chat request this one is answered by, and how to name chat's fields back in Responses terms."""
        self.refuse_unsupported()
        messages, origins = self._messages()
        chat: dict[str, Any] = {
            "model": self.model, "messages": messages, "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "user": self.user,
            "response_format": self._response_format(), "parallel_tool_calls": self.parallel_tool_calls,
            **self._tools(), **{name: (self.model_extra or {}).get(name) for name in SAMPLING_EXTENSIONS},
        }
        if self.stream:
            chat |= {"stream": True, "stream_options": {"include_usage": True}}
        names = ChatFieldNames(origins)
        try:
            body = ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
        except ValidationError as exc:
            message, param = invalid_request(RequestValidationError(exc.errors()))
            raise names.renamed(InvalidRequest(message, param=param)) from None
        return body, names

    def _messages(self) -> tuple[list[dict[str, Any]], list[Origin]]:
        messages: list[dict[str, Any]] = []
        origins: list[Origin] = []
        if self.instructions is not None:
            messages.append({"role": "system", "content": self.instructions})
            origins.append(Origin("instructions", {}))
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
            origins.append(Origin("input", {}))
            return messages, origins
        for i, item in enumerate(self.input):
            where = f"input[{i}]"
            if item.type == "message":
                messages.append({"role": _required(item.role, where, "role"),
                                 "content": _text_parts(_required(item.content, where, "content"),
                                                        f"{where}.content")})
                origins.append(Origin(where))
            elif item.type == "function_call":
                call = {"id": _required(item.call_id, where, "call_id"), "type": "function",
                        "function": {"name": _required(item.name, where, "name"),
                                     "arguments": _required(item.arguments, where, "arguments")}}
                if messages and messages[-1]["role"] == "assistant":  # calls of one turn are one chat message
                    messages[-1].setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                    origins.append(Origin(where, _CALL_FIELDS))
            elif item.type == "function_call_output":
                output = _required(item.output, where, "output")
                messages.append({"role": "tool", "tool_call_id": _required(item.call_id, where, "call_id"),
                                 "content": _text_parts(output, f"{where}.output")})
                origins.append(Origin(where, _OUTPUT_FIELDS))
            elif item.type == "reasoning":
                continue  # earlier thinking is not shown to the model again (DeepSeek-R1's template drops it too)
            elif item.type == "item_reference":
                raise UnsupportedParameter(f"{where}.type", f"is 'item_reference', which {NOT_STORED}")
            else:
                raise UnsupportedParameter(f"{where}.type", f"is '{item.type}', which is not supported")
        if not messages:
            raise InvalidRequest("the input has no message", param="input")
        return messages, origins

    def _response_format(self) -> dict[str, Any] | None:
        text_format = self.text.format if self.text is not None else None
        if text_format is None or text_format.type == "text":
            return None
        if text_format.type == "json_object":
            return {"type": "json_object"}
        if text_format.schema_ is None:
            raise InvalidRequest("a json_schema format needs a schema", param="text.format.schema")
        json_schema = {"name": text_format.name or "response", "schema": text_format.schema_,
                       "strict": text_format.strict, "description": text_format.description}
        return {"type": "json_schema", "json_schema": {k: v for k, v in json_schema.items() if v is not None}}

    def _tools(self) -> dict[str, Any]:
        """Chat's `tools` and `tool_choice`; none at all when no tools are given and the choice is the default."""
        choice = self.tool_choice
        if not self.tools and choice in (None, "auto", "none"):
            return {}
        tools = [{"type": "function", "function": {k: v for k, v in {
            "name": tool.name, "description": tool.description, "parameters": tool.parameters,
            "strict": tool.strict}.items() if v is not None}} for tool in self.tools or []]
        if isinstance(choice, ToolChoiceObject):
            return {"tools": tools, "tool_choice": {"type": "function", "function": {"name": choice.name}}}
        return {"tools": tools, "tool_choice": choice}

    def echoed_tools(self) -> list[dict[str, Any]]:
        return [tool.model_dump() for tool in self.tools or []]

    def echoed_text(self) -> dict[str, Any]:
        text_format = self.text.format if self.text is not None else None
        shown = text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"}
        return {"format": shown, "verbosity": "medium"}

    def echoed_tool_choice(self) -> Any:
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, ToolChoiceObject) else choice or "auto"


@dataclass(frozen=True)
class Origin:
    """Where one chat message came from: its Responses field, and what chat's sub-fields of the message are
    called there (None: the same names, as in a message item's `.content[0].type`; unlisted: the item itself)."""

    param: str
    subfields: dict[str, str] | None = None

    def path(self, chat_rest: str) -> str:
        if self.subfields is None:
            return self.param + chat_rest
        for chat_name, name in self.subfields.items():
            if chat_rest.startswith(chat_name):
                return self.param + name
        return self.param


_CALL_FIELDS = {".role": ".type"}  # the chat role (a tool call, a tool result) is the item's type here
_OUTPUT_FIELDS = {".role": ".type", ".tool_call_id": ".call_id", ".content": ".output"}


_CHAT_FIELD = re.compile(r"^(messages\[(?P<message>\d+)\]|(?P<field>[A-Za-z_]+))(?P<rest>.*)$")
_RENAMED = {"max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens", "prompt": "input",
            "messages": "input", "response_format": "text.format"}


@dataclass(frozen=True)
class ChatFieldNames:
    """Chat's field paths in Responses terms, for one translated request (`origins[i]`: chat's `messages[i]`)."""

    origins: list[Origin]

    def param(self, chat_param: str | None) -> str | None:
        """A chat field path as the Responses field it came from."""
        match = _CHAT_FIELD.match(chat_param or "")
        if match is None:
            return chat_param
        rest = match["rest"]
        if match["message"] is not None:
            index = int(match["message"])
            if index >= len(self.origins):
                return "input"
            return self.origins[index].path(rest)
        field = match["field"]
        if field == "response_format":
            return "text.format" + re.sub(r"^\.json_schema", "", rest)
        if field in ("tools", "tool_choice"):
            return field + rest.replace(".function", "", 1)
        return _RENAMED.get(field, field) + rest

    def renamed(self, error: APIError) -> APIError:
        """The same error, its param (and the message that quotes it) in Responses terms."""
        old, new = error.param, self.param(error.param)
        if old and new != old:
            error.message = error.message.replace(old, new or "")
            error.param = new
        return error


def _required(value: Any, where: str, name: str) -> Any:
    if value is None:
        raise InvalidRequest(f"{where}.{name} is required", param=f"{where}.{name}")
    return value


def _text_parts(content: str | list[InputPart], param: str) -> str | list[dict[str, str]]:
    """Responses' text parts as chat's; others (images, files, audio) are refused by name."""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.type not in ("input_text", "output_text"):
            raise UnsupportedParameter(f"{param}[{j}].type", f"is '{part.type}', which is not supported (text only)")
        _required(part.text, f"{param}[{j}]", "text")
        parts.append({"type": "text", "text": part.text})
    return parts
