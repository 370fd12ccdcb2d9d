"""The offline API: ``LLM(path).generate(prompts, params)`` and ``LLM(path).chat(messages, params)``."""

from __future__ import annotations

import itertools
from typing import Any

from rich.progress import Progress

from moecloud.engine.engine import EngineConfig, LLMEngine
from moecloud.engine.outputs import RequestOutput
from moecloud.engine.sampling_params import SamplingParams

Prompt = str | list[int]
Messages = list[dict[str, Any]]


class LLM:
    def __init__(self, model: str, **engine_options: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=str(model), **engine_options))
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the engine's other ranks (one rank: nothing to stop); also done when the LLM is collected."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def tokenizer(self):  # noqa: ANN201 - the engine's Tokenizer
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_progress: bool = False,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = sampling_params or SamplingParams()
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        order = []
        for prompt, p in zip(prompts, params_list, strict=True):
            request_id = f"offline-{next(self._ids)}"
            self.engine.add_request(request_id, prompt, p)
            order.append(request_id)
        finished: dict[str, RequestOutput] = {}
        with Progress(disable=not use_progress, transient=True) as progress:
            task = progress.add_task("generating", total=len(order))
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        finished[out.request_id] = out
                        progress.advance(task)
        return [finished[i] for i in order]

    def chat(
        self,
        messages: Messages | list[Messages],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [
            self.tokenizer.encode(
                self.tokenizer.apply_chat_template(conv, add_generation_prompt=add_generation_prompt),
                add_special_tokens=False,
            )
            for conv in conversations  # type: ignore[union-attr]
        ]
        return self.generate(prompts, sampling_params)
