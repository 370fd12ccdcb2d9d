"""POST /v1/completions: prompts -> engine requests -> a `text_completion` (or its stream of chunks)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from moecloud.engine import CompletionOutput, RequestOutput
from moecloud.serving.generation import ChoiceCursor, Generation, resolve_max_tokens
from moecloud.serving.logprobs import completion_logprobs, merge_completion_logprobs
from moecloud.serving.protocol import CompletionRequest
from moecloud.serving.state import ServingState, new_request_id


class CompletionRun:
    """One /v1/completions request from admission to its last chunk."""

    def __init__(self, state: ServingState, body: CompletionRequest) -> None:
        self.state = state
        self.body = body
        self.created = int(time.time())
        self.generation = Generation(state.client, state.metrics, new_request_id("cmpl"))
        self.prompt_texts: list[str] = []

    async def start(self) -> None:
        state, body = self.state, self.body
        state.admit(body)
        structured = await state.structured_output(body)
        requested = body.prompts()
        body.check_prompt_ids(requested, state.client.tokenizer.vocab_size)
        prompts = [await state.encode(p, add_special_tokens=True) if isinstance(p, str) else p for p in requested]
        max_tokens = min(resolve_max_tokens(body.max_tokens, len(ids), state.client.max_model_len,
                                            state.max_tokens_default) for ids in prompts)
        prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
        params = body.sampling_params(max_tokens, logprobs=body.logprobs, prompt_logprobs=prompt_logprobs)
        params.structured = structured
        await self.generation.open(list(prompts), params)
        if body.echo:
            self.prompt_texts = [p if isinstance(p, str) else state.client.tokenizer.decode(p) for p in requested]

    def _choice_index(self, prompt_index: int, output: CompletionOutput) -> int:
        return prompt_index * self.body.n + output.index

    def _echo(self, prompt_index: int, output: RequestOutput, cursor: ChoiceCursor) -> tuple[str, dict | None]:
        """The prompt part of a choice when echoing: its text and (with logprobs) its prompt-token logprobs."""
        if not self.body.echo:
            return "", None
        text = self.prompt_texts[prompt_index]
        if self.body.logprobs is None:
            return text, None
        entries = output.prompt_logprobs or [None] * len(output.prompt_token_ids)
        logprobs = completion_logprobs(output.prompt_token_ids, entries, self.state.token_text)
        cursor.text_offset = len(text)
        return text, logprobs

    def _delta(self, prompt_index: int, output: RequestOutput, choice: CompletionOutput,
               cursor: ChoiceCursor) -> dict[str, object] | None:
        echo_text, logprobs = ("", None) if cursor.started else self._echo(prompt_index, output, cursor)
        first = not cursor.started
        cursor.started = True
        text, start, end = cursor.advance(choice)
        if self.body.logprobs is not None:
            new = completion_logprobs(choice.token_ids[start:end], (choice.logprobs or [])[start:end],
                                      self.state.token_text, cursor.text_offset)
            cursor.text_offset += sum(len(t) for t in new["tokens"])  # type: ignore[arg-type]
            if logprobs is None:
                logprobs = new
            else:
                merge_completion_logprobs(logprobs, new)
        if not (first or text or echo_text or cursor.finished):
            return None
        return {"index": self._choice_index(prompt_index, choice), "text": echo_text + text,
                "logprobs": logprobs, "finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason}

    def _envelope(self, choices: list[dict[str, object]]) -> dict[str, object]:
        return {"id": self.generation.request_id, "object": "text_completion", "created": self.created,
                "model": self.state.served_model_name, "system_fingerprint": None, "choices": choices}

    async def response(self) -> dict[str, object]:
        try:
            final = await self.generation.collect()
        finally:
            self.generation.close()
        choices = []
        for prompt_index, output in enumerate(final):
            for choice in output.outputs:
                delta = self._delta(prompt_index, output, choice, ChoiceCursor())
                assert delta is not None
                choices.append(delta)
        choices.sort(key=lambda c: c["index"])  # type: ignore[arg-type, return-value]
        return self._envelope(choices) | {"usage": self.generation.usage()}

    async def chunks(self) -> AsyncIterator[dict[str, object]]:
        cursors: dict[int, ChoiceCursor] = {}
        usage_field = {"usage": None} if self.body.include_usage else {}
        async for prompt_index, output in self.generation.outputs():
            for choice in output.outputs:
                cursor = cursors.setdefault(self._choice_index(prompt_index, choice), ChoiceCursor())
                if cursor.finished:
                    continue
                delta = self._delta(prompt_index, output, choice, cursor)
                if delta is not None:
                    yield self._envelope([delta]) | usage_field
        if self.body.include_usage:
            yield self._envelope([]) | {"usage": self.generation.usage()}
