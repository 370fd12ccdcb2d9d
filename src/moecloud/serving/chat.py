"""POST /v1/chat/completions: messages -> chat template -> engine request -> `chat.completion` (or chunks)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from moecloud.engine import CompletionOutput
from moecloud.serving.errors import InvalidRequest
from moecloud.serving.generation import ChoiceCursor, Generation, resolve_max_tokens
from moecloud.serving.logprobs import chat_logprobs
from moecloud.serving.protocol import ChatCompletionRequest
from moecloud.serving.state import ServingState, new_request_id


class ChatRun:
    """One /v1/chat/completions request from admission to its last chunk."""

    def __init__(self, state: ServingState, body: ChatCompletionRequest) -> None:
        self.state = state
        self.body = body
        self.created = int(time.time())
        self.generation = Generation(state.client, state.metrics, new_request_id("chatcmpl"))
        self.top_logprobs: int | None = None

    async def start(self) -> None:
        state, body = self.state, self.body
        state.admit(body)
        structured = await state.structured_output(body)
        self.top_logprobs = body.top_logprobs_count()
        try:
            text = state.client.tokenizer.apply_chat_template(body.template_messages(), add_generation_prompt=True)
        except ValueError as exc:  # the engine's ChatTemplateError
            raise InvalidRequest(f"the messages do not fit the chat template: {exc}", param="messages") from exc
        ids = await state.encode(text, add_special_tokens=False)
        max_tokens = resolve_max_tokens(body.requested_max_tokens(), len(ids), state.client.max_model_len,
                                        state.max_tokens_default)
        params = body.sampling_params(max_tokens, logprobs=self.top_logprobs, prompt_logprobs=None)
        params.structured = structured
        await self.generation.open([ids], params)

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
        choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": self._logprobs(c, 0, len(c.token_ids)), "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason} for c in final.outputs]
        return self._envelope("chat.completion", choices) | {"usage": self.generation.usage()}

    async def chunks(self) -> AsyncIterator[dict[str, object]]:
        cursors: dict[int, ChoiceCursor] = {}
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
                if not (text or start < end or cursor.finished):
                    continue
                chunk = {"index": choice.index, "delta": {"content": text} if text else {},
                         "logprobs": self._logprobs(choice, start, end), "finish_reason": choice.finish_reason}
                yield self._envelope("chat.completion.chunk", [chunk]) | usage_field
        if self.body.include_usage:
            yield self._envelope("chat.completion.chunk", []) | {"usage": self.generation.usage()}
