"""POST /v1/chat/completions: messages -> chat template -> engine request -> `chat.completion` (or chunks)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from moecloud.engine import CompletionOutput, StructuredOutput
from moecloud.engine.reasoning import reasoning_tokens
from moecloud.engine.sampling_params import InvalidParameter
from moecloud.serving.generation import ChoiceCursor, Generation, resolve_max_tokens
from moecloud.serving.logprobs import chat_logprobs
from moecloud.serving.protocol import ChatCompletionRequest
from moecloud.serving.state import ServingState, new_request_id
from moecloud.serving.tool_use import AssistantOutput, ToolPlan, constrain_answer
from moecloud.web.errors import InvalidRequest


class ChatRun:
    """One /v1/chat/completions request from admission to its last chunk."""

    def __init__(self, state: ServingState, body: ChatCompletionRequest) -> None:
        self.state = state
        self.body = body
        self.created = int(time.time())
        self.generation = Generation(state.client, state.metrics, new_request_id("chatcmpl"))
        self.top_logprobs: int | None = None
        self.plan = ToolPlan("none", [])

    async def start(self) -> None:
        state, body = self.state, self.body
        state.admit(body)
        structured = await state.structured_output(body)
        self.top_logprobs = body.top_logprobs_count()
        self.plan = ToolPlan.of(body)
        chat_format = state.chat_format
        try:
            text = chat_format.render(state.client.tokenizer, body.template_messages(), self.plan.tools)
        except ValueError as exc:  # the engine's ChatTemplateError
            raise InvalidRequest(f"the messages do not fit the chat template: {exc}", param="messages") from exc
        ids = await state.encode(text, add_special_tokens=False)
        max_tokens = resolve_max_tokens(body.requested_max_tokens(), len(ids), state.client.max_model_len,
                                        state.max_tokens_default)
        params = body.sampling_params(max_tokens, logprobs=self.top_logprobs, prompt_logprobs=None)
        params.structured = constrain_answer(await self._tool_constraint() or structured, chat_format)
        await self.generation.open([ids], params)

    async def _tool_constraint(self) -> StructuredOutput | None:
        """The constraint of a "required" or named tool_choice, compiled now: a schema the grammar library refuses
        is a 400 naming the tool's parameters."""
        try:
            constraint = self.plan.constraint()
            if constraint is not None:
                await self.state.client.compile_structured(constraint)
        except InvalidParameter as exc:
            raise InvalidRequest(f"'{self.plan.schema_param()}' cannot be used: {exc}",
                                 param=self.plan.schema_param()) from exc
        return constraint

    def _output(self) -> AssistantOutput:
        return AssistantOutput(self.plan, self.state.chat_format, self.body.separate_reasoning)

    def _usage(self) -> dict[str, object]:
        """The usage so far, with the thinking tokens among the completion tokens counted apart."""
        decode, thinking = self.state.client.tokenizer.decode, self.state.chat_format.thinking
        reasoning = sum(reasoning_tokens(c.token_ids, decode, thinking) for o in self.generation.final
                        for c in o.outputs)
        return self.generation.usage() | {"completion_tokens_details": {"reasoning_tokens": reasoning}}

    def _logprobs(self, choice: CompletionOutput, start: int, end: int) -> dict[str, object] | None:
        if self.top_logprobs is None:
            return None
        content = chat_logprobs(choice.token_ids[start:end], (choice.logprobs or [])[start:end],
                                self.top_logprobs, self.state.token_text)
        return {"content": content, "refusal": None}

    def _envelope(self, object_: str, choices: list[dict[str, object]]) -> dict[str, object]:
        return {"id": self.generation.request_id, "object": object_, "created": self.created,
                "model": self.state.served_model_name, "system_fingerprint": None, "choices": choices}

    async def response(self) -> dict[str, object]:
        try:
            final = (await self.generation.collect())[0]
        finally:
            self.generation.close()
        choices = []
        for c in final.outputs:
            output = self._output()
            output.feed(c.text, final=True)
            choices.append({"index": c.index, "message": output.message(),
                            "logprobs": self._logprobs(c, 0, len(c.token_ids)),
                            "finish_reason": output.finish_reason(c.finish_reason), "stop_reason": c.stop_reason})
        return self._envelope("chat.completion", choices) | {"usage": self._usage()}

    async def chunks(self) -> AsyncIterator[dict[str, object]]:
        cursors: dict[int, ChoiceCursor] = {}
        outputs: dict[int, AssistantOutput] = {}
        usage_field = {"usage": None} if self.body.include_usage else {}
        async for _, output in self.generation.outputs():
            for choice in output.outputs:
                cursor = cursors.setdefault(choice.index, ChoiceCursor())
                if cursor.finished:
                    continue
                if not cursor.started:
                    cursor.started = True
                    role = {"index": choice.index, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None}
                    yield self._envelope("chat.completion.chunk", [role]) | usage_field
                text, start, end = cursor.advance(choice)
                shaped = outputs.setdefault(choice.index, self._output())
                deltas: list[dict[str, Any]] = shaped.feed(text, final=cursor.finished)
                if not (deltas or start < end or cursor.finished):
                    continue
                for i, delta in enumerate(deltas or [{}]):
                    last = i == max(len(deltas), 1) - 1  # logprobs and the finish reason ride on the last delta
                    chunk = {"index": choice.index, "delta": delta,
                             "logprobs": self._logprobs(choice, start, end) if last else None,
                             "finish_reason": shaped.finish_reason(choice.finish_reason) if last else None}
                    yield self._envelope("chat.completion.chunk", [chunk]) | usage_field
        if self.body.include_usage:
            yield self._envelope("chat.completion.chunk", []) | {"usage": self._usage()}
