"""OpenAI request schemas. Unknown fields are ignored; known OpenAI fields this server cannot honour are
declared so that `unsupported_parameter()` can name them in a 400 instead of silently dropping them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from moecloud.engine.sampling_params import SamplingParams
from moecloud.serving.errors import InvalidRequest

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Schema):
    include_usage: StrictBool = False


class ContentPart(_Schema):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Schema):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: Any = None
    function_call: Any = None


class SamplingRequest(_Schema):
    """Fields shared by chat and completions, including vLLM's widely used extensions (top_k, min_p, ...)."""

    model: StrictStr
    n: Annotated[int, Field(ge=1, le=64)] = 1
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: StrictBool = False
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    logit_bias: dict[str, float] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported_parameter(self) -> str | None:
        """The first known-but-unsupported parameter set to a value this server cannot honour, if any."""
        if self.logit_bias:
            return "logit_bias"
        return None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise InvalidRequest("stop strings must be non-empty", param="stop")
        return stops

    def sampling_params(self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None) -> SamplingParams:
        try:
            return SamplingParams(
                n=self.n,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=self.top_k or 0,
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
            raise InvalidRequest(str(exc)) from exc

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported_parameter(self) -> str | None:
        rejected = ("tools", "functions", "function_call", "audio", "prediction", "web_search_options")
        for name in rejected:
            if getattr(self, name):
                return name
        if self.tool_choice not in (None, "none"):
            return "tool_choice"
        if self.response_format is not None and _format_type(self.response_format) != "text":
            return "response_format"
        if self.modalities is not None and self.modalities != ["text"]:
            return "modalities"
        for i, message in enumerate(self.messages):
            if message.role in ("tool", "function"):
                return f"messages[{i}].role"
            if message.tool_calls or message.function_call:
                return f"messages[{i}].tool_calls"
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if part.type != "text" or part.text is None:
                    return f"messages[{i}].content[{j}].type"
        return super().unsupported_parameter()

    def top_logprobs_count(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template expects them: `developer` is `system`, text parts are joined."""
        rendered = []
        for message in self.messages:
            content = message.content
            if isinstance(content, list):
                content = "".join(part.text or "" for part in content)
            role = "system" if message.role == "developer" else message.role
            rendered.append({"role": role, "content": content or ""})
        return rendered


class CompletionRequest(SamplingRequest):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    echo: StrictBool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: StrictStr | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

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


def _format_type(response_format: Any) -> Any:
    return response_format.get("type") if isinstance(response_format, dict) else response_format
