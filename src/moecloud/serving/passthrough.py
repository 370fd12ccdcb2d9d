"""A pass-through gateway: forwards the OpenAI API to one worker unchanged, streams included.

It stands in for `moecloud.gateway` in `moecloud serve` until keys and billing exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from moecloud.serving.errors import error_body

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


def build_passthrough_app(upstream: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(None, connect=5.0)) as client:
            app.state.upstream = client
            yield

    app = FastAPI(title="moecloud gateway (pass-through)", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.upstream
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream_request = client.build_request(request.method, "/" + path, params=request.query_params,
                                                headers=headers, content=await request.body())
        try:
            upstream_response = await client.send(upstream_request, stream=True)
        except httpx.TransportError as exc:
            body = error_body(f"the engine worker is unreachable: {exc!r}", "service_unavailable",
                              code="upstream_unavailable")
            return JSONResponse(body, status_code=503)
        response_headers = {k: v for k, v in upstream_response.headers.items() if k.lower() not in _HOP_BY_HOP}

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream_response.aiter_raw():
                    yield chunk
            finally:  # also when our client disconnects: closing upstream makes the worker abort too
                await upstream_response.aclose()

        return StreamingResponse(relay(), status_code=upstream_response.status_code, headers=response_headers)

    return app
