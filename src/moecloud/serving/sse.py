"""Server-sent events in OpenAI's streaming format: `data: {chunk}` lines closed by `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from moecloud.serving.generation import Generation
from moecloud.web.errors import APIError, error_body

DONE = "data: [DONE]\n\n"


def sse(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def event_stream(chunks: AsyncIterator[dict[str, object]], generation: Generation) -> AsyncIterator[str]:
    """Frame chunks as SSE. An error after the 200 went out becomes an error event; the engine requests are
    aborted whenever the stream stops early, a client disconnect included (Starlette cancels this generator)."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
    except APIError as exc:
        yield sse(error_body(exc.message, exc.type, exc.param, exc.code))
    finally:
        generation.close()
    yield DONE
