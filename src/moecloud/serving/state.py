"""What the routes share: the engine client, metrics, the served name and whether the server is draining."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from moecloud.engine import StructuredOutput
from moecloud.engine.chat_prompt import ChatFormat
from moecloud.engine.sampling_params import InvalidParameter
from moecloud.serving.engine_client import EngineClient
from moecloud.serving.errors import ShuttingDown
from moecloud.serving.metrics import ServingMetrics
from moecloud.serving.protocol import SamplingRequest
from moecloud.serving.reports import UsageReports
from moecloud.serving.structured import requested_constraint
from moecloud.web.errors import InvalidRequest, ModelNotFound, UnsupportedParameter


@dataclass
class ServingState:
    client: EngineClient
    served_model_name: str
    max_tokens_default: int
    reports: UsageReports
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    max_structured_bytes: int = 65536
    draining: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def admit(self, body: SamplingRequest) -> None:
        """Refuse a request before any work: draining, unknown model, a token id outside the vocabulary, or a
        parameter we cannot honour."""
        if self.draining:
            raise ShuttingDown()
        if body.model != self.served_model_name:
            raise ModelNotFound(f"The model '{body.model}' does not exist", param="model")
        body.check_token_ids(self.client.tokenizer.vocab_size)
        unsupported = body.unsupported_parameter()
        if unsupported is not None:
            raise UnsupportedParameter(unsupported)

    @functools.cached_property
    def chat_format(self) -> ChatFormat:
        """How the model's chat template handles tools and thinking (probed once)."""
        return ChatFormat.probe(self.client.tokenizer)

    async def structured_output(self, body: SamplingRequest) -> StructuredOutput | None:
        """The request's constraint, compiled now (off the engine's thread, so a large grammar never stalls a
        step): a schema or regex the grammar library refuses is a 400 naming the field that gave it."""
        requested = requested_constraint(body, self.max_structured_bytes)
        if requested is None:
            return None
        constraint, param = requested
        try:
            await self.client.compile_structured(constraint)
        except InvalidParameter as exc:
            raise InvalidRequest(f"'{param}' cannot be used: {exc}", param=param) from exc
        return constraint

    def token_text(self, token_id: int) -> str:
        return self.client.tokenizer.id_to_token(token_id)

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Tokenize off the event loop: a huge prompt must not stall every other stream."""
        ids = await asyncio.to_thread(self.client.tokenizer.encode, text, add_special_tokens=add_special_tokens)
        if not ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        return list(ids)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _state(request: Request) -> ServingState:
    return request.app.state.serving


State = Annotated[ServingState, Depends(_state)]
