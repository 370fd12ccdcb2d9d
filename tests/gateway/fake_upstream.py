"""A deterministic OpenAI-compatible upstream for the gateway's tests.

The last user message (or the prompt) steers it:
- ``FAIL`` -> 500; ``BUSY`` -> 429; ``HANG`` -> never answers;
- ``SLOW`` -> waits 0.4 s before answering;
- ``NOUSAGE`` -> no usage in the answer or the stream;
- ``HANG_AFTER_3`` -> streams 3 tokens then goes silent; ``DIE_AFTER_2`` -> streams 2 tokens then drops;
- ``CACHE`` -> half the prompt tokens are reported as prefix-cache hits;
- ``MALFORMED`` -> a 200 answer without ``choices``; ``BADTYPES`` -> ``choices`` and ``usage`` of wrong types.
Otherwise it answers ``max_tokens`` tokens. Usage: prompt = 5 + number of words, completion = tokens sent.
``app.state.answer`` (a string; None: the default) is what it answers instead, streamed in pieces of
``app.state.answer_piece`` characters (each piece a token).
Whole-replica failures: ``app.state.down = True`` answers 503 to everything (health checks included);
``app.state.engine_dead = True`` is a worker whose engine died: 503 to completions and to ``GET /health`` (the
worker's engine check), but ``/v1/models`` still answers 200.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def prompt_text(body: dict[str, Any]) -> str:
    if isinstance(body.get("input"), str):
        return body["input"]
    if isinstance(body.get("messages"), list):
        return " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def usage_for(body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
    text = prompt_text(body)
    prompt_tokens = 5 + len(text.split())
    cached = prompt_tokens // 2 if "CACHE" in text else 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def create_fake_upstream() -> FastAPI:
    app = FastAPI()
    app.state.received = []
    app.state.down = False
    app.state.engine_dead = False
    app.state.answer = None
    app.state.answer_piece = 5
    app.state.models = {"fake": None}  # the models /v1/models lists, with their max_model_len (None: not said)

    async def handle(request: Request, chat: bool) -> Response:
        if app.state.down or app.state.engine_dead:
            return JSONResponse({"error": {"message": "replica down", "type": "server_error"}}, 503)
        body = await request.json()
        app.state.received.append({"body": body, "request_id": request.headers.get("x-request-id"),
                                   "authorization": request.headers.get("authorization")})
        text = prompt_text(body)
        if "FAIL" in text:
            return JSONResponse({"error": {"message": "engine exploded", "type": "server_error"}}, 500)
        if "BUSY" in text:
            return JSONResponse({"error": {"message": "queue full", "type": "rate_limit"}}, 429,
                                headers={"retry-after": "7"})
        if "HANG" in text and "HANG_AFTER" not in text:
            await asyncio.sleep(3600)
        if "SLOW" in text:
            await asyncio.sleep(0.4)
        tokens = body.get("max_tokens") or 16
        if app.state.answer is not None:
            tokens = len(_pieces(app.state.answer))
        if body.get("stream"):
            return StreamingResponse(_stream(body, text, tokens, chat), media_type="text/event-stream")
        if "MALFORMED" in text:
            return JSONResponse({"id": "cmpl-fake", "object": "text_completion", "usage": usage_for(body, tokens)})
        if "BADTYPES" in text:
            return JSONResponse({"id": "cmpl-fake", "choices": "oops", "usage": {"prompt_tokens": "many"}})
        content = "tok " * tokens if app.state.answer is None else app.state.answer
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": content, "finish_reason": "length"}
        )
        answer: dict[str, Any] = {
            "id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion", "created": 1,
            "model": body["model"], "choices": [choice],
        }
        if "NOUSAGE" not in text:
            answer["usage"] = usage_for(body, tokens)
        return JSONResponse(answer)

    async def _stream(body: dict[str, Any], text: str, tokens: int, chat: bool) -> AsyncIterator[bytes]:
        def event(payload: Any) -> bytes:
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        def chunk(i: int) -> dict[str, Any]:
            piece = f"t{i} " if app.state.answer is None else _pieces(app.state.answer)[i]
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            kind = "chat.completion.chunk" if chat else "text_completion"
            return {"id": "cmpl-fake", "object": kind, "created": 1, "model": body["model"], "choices": [choice]}

        limit = 3 if "HANG_AFTER_3" in text else 2 if "DIE_AFTER_2" in text else tokens
        for i in range(limit):
            yield event(chunk(i))
        if "HANG_AFTER_3" in text:
            await asyncio.sleep(3600)
        if "DIE_AFTER_2" in text:
            raise RuntimeError("worker died mid-stream")
        options = body.get("stream_options") or {}
        if options.get("include_usage") and "NOUSAGE" not in text:
            kind = "chat.completion.chunk" if chat else "text_completion"
            yield event({"id": "cmpl-fake", "object": kind, "created": 1, "model": body["model"], "choices": [],
                         "usage": usage_for(body, tokens)})
        yield b"data: [DONE]\n\n"

    def _pieces(answer: str) -> list[str]:
        size = app.state.answer_piece
        return [answer[i:i + size] for i in range(0, len(answer), size)] or [""]

    @app.get("/health")
    async def health() -> Response:
        dead = app.state.down or app.state.engine_dead
        return JSONResponse({"status": "engine_dead" if dead else "ok"}, 503 if dead else 200)

    @app.get("/v1/models")
    async def models() -> Response:
        if app.state.down:
            return JSONResponse({"error": {"message": "replica down"}}, 503)
        models = [{"id": name, "object": "model", "created": 0, "owned_by": "fake",
                   **({"max_model_len": length} if length else {})} for name, length in app.state.models.items()]
        return JSONResponse({"object": "list", "data": models})

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        """The Responses API in brief: one message item of ``max_output_tokens`` tokens (string ``input`` only);
        ``DIE_AFTER_2`` and ``NOUSAGE`` as for chat."""
        body = await request.json()
        app.state.received.append({"body": body, "request_id": request.headers.get("x-request-id"),
                                   "authorization": request.headers.get("authorization")})
        text, tokens = prompt_text(body), body.get("max_output_tokens") or 16
        pieces = ["tok "] * tokens if app.state.answer is None else _pieces(app.state.answer)
        tokens = len(pieces)
        counts = usage_for(body, tokens)
        usage = {"input_tokens": counts["prompt_tokens"], "output_tokens": tokens,
                 "input_tokens_details": counts["prompt_tokens_details"], "total_tokens": counts["total_tokens"]}
        response = {"id": "resp_fake", "object": "response", "status": "completed", "model": body["model"],
                    "output": [{"type": "message", "role": "assistant",
                                "content": [{"type": "output_text", "text": "".join(pieces)}]}],
                    "usage": None if "NOUSAGE" in text else usage}
        if not body.get("stream"):
            return JSONResponse(response)

        async def events() -> AsyncIterator[bytes]:
            def event(number: int, kind: str, **fields: Any) -> bytes:
                payload = {"type": kind, "sequence_number": number, **fields}
                return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

            yield event(0, "response.created", response={**response, "status": "in_progress", "usage": None})
            for i in range(2 if "DIE_AFTER_2" in text else tokens):
                yield event(i + 1, "response.output_text.delta", output_index=0, content_index=0, delta=pieces[i])
            if "DIE_AFTER_2" in text:
                raise RuntimeError("worker died mid-stream")
            yield event(tokens + 1, "response.completed", response=response)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    return app
