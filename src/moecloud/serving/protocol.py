"""OpenAI request schemas. Unknown fields are ignored; known OpenAI fields this server cannot honour are
declared so that `unsupported_parameter()` can name them in a 400 instead of silently dropping them.

Every value is bounded here, before the engine sees it, so that the engine's arithmetic stays finite: the
bounds are in docs/api.md ("Validation"). Token ids are checked against the vocabulary by `check_token_ids`,
once the route knows the model.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from moecloud.engine.sampling_params import SamplingParams
from moecloud.serving.errors import InvalidRequest

GREEDY_BELOW = 1e-5  # temperature below this is greedy: logits / 1e-45 overflow to inf, and softmax to NaN
TOP_1_BELOW = 1e-5  # top_p below this keeps only the most likely token (5e-324 underflows float32 to 0)
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 1000  # characters
MAX_STOP_TOKEN_IDS = 64
MAX_PROMPTS = 256  # prompts in one /v1/completions request
MAX_CHOICES = 64
MAX_TOOLS = 128  # OpenAI's limit
MAX_PARAMETERS_CHARS = 32768  # one function's parameter schema, as compact JSON
MAX_PARAMETERS_DEPTH = 32  # nesting of a parameter schema's objects and arrays
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


def _valid_unicode(text: str) -> str:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer (or UTF-8 reply) can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode (a lone surrogate at character {exc.start})") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopString = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
TokenIdKey = Annotated[Text, Field(pattern=r"^[0-9]{1,10}$")]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Schema):
    include_usage: StrictBool = False


class ContentPart(_Schema):
    type: Text
    text: Text | None = None


def _bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter schema is an object schema of bounded size (it is compiled into a grammar for each request)."""
    if schema.get("type", "object") != "object":
        raise ValueError("must be a JSON schema of type 'object'")
    stack, size = [(schema, 1)], 0
    while stack:
        value, depth = stack.pop()
        if depth > MAX_PARAMETERS_DEPTH:
            raise ValueError(f"nests deeper than {MAX_PARAMETERS_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        size += len(value) if isinstance(value, str) else 8
        if size > MAX_PARAMETERS_CHARS:
            raise ValueError(f"is larger than {MAX_PARAMETERS_CHARS} characters")
        stack.extend((child, depth + 1) for child in children)
    if len(json.dumps(schema, separators=(",", ":"))) > MAX_PARAMETERS_CHARS:
        raise ValueError(f"is larger than {MAX_PARAMETERS_CHARS} characters")
    return schema


FunctionName = Annotated[Text, Field(pattern=FUNCTION_NAME)]


class FunctionDefinition(_Schema):
    name: FunctionName
    description: Text | None = None
    parameters: Annotated[dict[str, Any], AfterValidator(_bounded_schema)] | None = None
    strict: StrictBool | None = None


class ToolDefinition(_Schema):
    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(_Schema):
    name: Text


class NamedToolChoice(_Schema):
    type: Literal["function"]
    function: ChosenFunction


class FunctionCall(_Schema):
    name: Text
    arguments: Text


class ToolCall(_Schema):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Schema):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: Text | None = None
    function_call: Any = None


class SamplingRequest(_Schema):
    """Fields shared by chat and completions, including vLLM's widely used extensions (top_k, min_p, ...)."""

    model: Text
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10.0)] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | None = None  # what torch's generator takes
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stop_token_ids: Annotated[list[StrictInt], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: StrictBool = False
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    logit_bias: dict[TokenIdKey, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    # structured output (serving/structured.py reads these): OpenAI's, vLLM's, and vLLM's older names
    response_format: Any = None
    structured_outputs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported_parameter(self) -> str | None:
        """The first known-but-unsupported parameter set to a value this server cannot honour, if any."""
        if self.logit_bias:
            return "logit_bias"
        return None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check_token_ids(self, vocab_size: int) -> None:
        """Token ids the request names must index the vocabulary (the sampler indexes logits with them)."""
        check_token_ids(self.stop_token_ids or [], vocab_size, "stop_token_ids")
        for key in self.logit_bias or {}:
            check_token_id(int(key), vocab_size, f"logit_bias.{key}")

    def sampling_params(self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None) -> SamplingParams:
        try:
            temperature = 1.0 if self.temperature is None else self.temperature
            top_p = 1.0 if self.top_p is None else self.top_p
            top_1 = top_p < TOP_1_BELOW  # the smallest set of tokens holding that much mass is the top one
            return SamplingParams(
                n=self.n,
                temperature=0.0 if temperature < GREEDY_BELOW else temperature,
                top_p=1.0 if top_1 else top_p,
                top_k=1 if top_1 else self.top_k or 0,
                min_p=self.min_p or 0.0,
                presence_penalty=self.presence_penalty or 0.0,
                frequency_penalty=self.frequency_penalty or 0.0,
                repetition_penalty=self.repetition_penalty or 1.0,
                seed=self.seed,
                max_tokens=max_tokens,
                min_tokens=self.min_tokens,
                stop=self.stop_strings(),
                stop_token_ids=list(self.stop_token_ids or []),
                ignore_eos=self.ignore_eos,
                include_stop_str_in_output=self.include_stop_str_in_output,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                skip_special_tokens=self.skip_special_tokens,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=getattr(exc, "param", None)) from exc

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    separate_reasoning: StrictBool = True  # SGLang's name: False leaves the thinking in `content`
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: list[Text] | None = None
    prediction: Any = None
    web_search_options: Any = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported_parameter(self) -> str | None:
        rejected = ("functions", "function_call", "audio", "prediction", "web_search_options")
        for name in rejected:
            if getattr(self, name):
                return name
        if self.modalities is not None and self.modalities != ["text"]:
            return "modalities"
        for i, message in enumerate(self.messages):
            if message.role == "function":
                return f"messages[{i}].role"
            if message.function_call:
                return f"messages[{i}].function_call"
            if message.tool_calls and message.role != "assistant":
                return f"messages[{i}].tool_calls"
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if part.type != "text" or part.text is None:
                    return f"messages[{i}].content[{j}].type"
        return super().unsupported_parameter()

    def top_logprobs_count(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as the chat template expects them: `developer` is `system`, text parts are joined; an
        assistant's tool calls keep OpenAI's shape (with `content` None when it has no text, as DeepSeek's
        template expects), a tool result keeps its `tool_call_id`."""
        rendered: list[dict[str, Any]] = []
        for message in self.messages:
            content = message.content
            if isinstance(content, list):
                content = "".join(part.text or "" for part in content)
            role = "system" if message.role == "developer" else message.role
            entry: dict[str, Any] = {"role": role, "content": content or ""}
            if message.tool_calls:
                entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
                entry["content"] = content or None
            if role == "tool":
                entry["tool_call_id"] = message.tool_call_id or ""
            rendered.append(entry)
        return rendered


class CompletionRequest(SamplingRequest):
    prompt: (Text | Annotated[list[Text], Field(max_length=MAX_PROMPTS)] | list[StrictInt]
             | Annotated[list[list[StrictInt]], Field(max_length=MAX_PROMPTS)])
    echo: StrictBool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: Text | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None

    def unsupported_parameter(self) -> str | None:
        if self.suffix:
            return "suffix"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of"
        return super().unsupported_parameter()

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: one string, several strings, one token-id list, or several."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        if any(isinstance(p, list) and not p for p in prompt):
            raise InvalidRequest("a token-id prompt must not be empty", param="prompt")
        return list(prompt)  # type: ignore[arg-type]

    def check_prompt_ids(self, prompts: list[str | list[int]], vocab_size: int) -> None:
        nested = isinstance(self.prompt, list) and bool(self.prompt) and isinstance(self.prompt[0], list)
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, list):
                check_token_ids(prompt, vocab_size, f"prompt[{i}]" if nested else "prompt")


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    """Refuse the first id outside [0, vocab_size), naming it as ``param[i]`` (Python's negative indices too)."""
    for i, token_id in enumerate(ids):
        check_token_id(token_id, vocab_size, f"{param}[{i}]")


def check_token_id(token_id: int, vocab_size: int, param: str) -> None:
    if not 0 <= token_id < vocab_size:
        raise InvalidRequest(f"token id {token_id} is not in the vocabulary [0, {vocab_size})", param=param)

