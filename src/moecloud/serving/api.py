"""The OpenAI-compatible routes of one engine worker. Routes parse, hand off to a run, and shape the reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Scope

from moecloud.engine.failures import FAULT_STAGES
from moecloud.serving import reports
from moecloud.serving.chat import ChatRun
from moecloud.serving.completions import CompletionRun
from moecloud.serving.generation import Generation
from moecloud.serving.metrics import ServingMetrics
from moecloud.serving.protocol import ChatCompletionRequest, CompletionRequest
from moecloud.serving.responses import ResponseNotStored, ResponsesRun, typed_event_stream
from moecloud.serving.responses_protocol import ResponsesRequest
from moecloud.serving.sse import event_stream
from moecloud.serving.state import ServingState, State
from moecloud.web.disconnect import unless_disconnected
from moecloud.web.errors import InvalidRequest, ModelNotFound, install_error_handlers
from moecloud.web.metrics import RequestCounter

router = APIRouter()
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_COUNTED_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models"}
FAULT_HEADER = "x-moecloud-fault"


Run = ChatRun | CompletionRun | ResponsesRun
Framing = Callable[[AsyncIterator[Any], Generation], AsyncIterator[str]]


def _arm_fault(request: Request, run: Run) -> None:
    """Tests only: with serving.fault_injection, `x-moecloud-fault: forward|sample|fatal` makes the engine fail
    this request at that stage (fatal: as a lost device would). Without the setting the header means nothing."""
    faults, stage = run.state.client.faults, request.headers.get(FAULT_HEADER)
    if faults is None or stage is None:
        return
    if stage not in FAULT_STAGES:
        raise InvalidRequest(f"{FAULT_HEADER} must be one of {', '.join(FAULT_STAGES)}", param=FAULT_HEADER)
    faults.arm(run.generation.request_id, stage)


async def _respond(request: Request, run: Run, stream: bool, framing: Framing = event_stream) -> Response:
    _arm_fault(request, run)
    # tracked from the start: the gateway may ask for the final usage of a request whose client hung up while
    # the engine was still taking it
    request.app.state.serving.reports.track(request.headers.get("x-request-id"), run.generation)
    try:
        await unless_disconnected(request.receive, run.start())
    except BaseException:
        run.generation.close()
        raise
    if stream:
        return StreamingResponse(framing(run.chunks(), run.generation), media_type="text/event-stream",
                                 headers=_SSE_HEADERS)
    return JSONResponse(await unless_disconnected(request.receive, run.response()))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    return await _respond(request, ChatRun(state, body), bool(body.stream))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: State) -> Response:
    return await _respond(request, CompletionRun(state, body), bool(body.stream))


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request, state: State) -> Response:
    return await _respond(request, ResponsesRun(state, body), bool(body.stream), typed_event_stream)


@router.get("/v1/responses/{response_id}")
@router.delete("/v1/responses/{response_id}")
@router.get("/v1/responses/{response_id}/input_items")
@router.post("/v1/responses/{response_id}/cancel")
async def stored_response(response_id: str) -> None:
    raise ResponseNotStored(response_id)


def _model_card(state: ServingState) -> dict[str, object]:
    return {"id": state.served_model_name, "object": "model", "created": state.created, "owned_by": "moecloud",
            "root": state.client.model_name, "max_model_len": state.client.max_model_len}


@router.get("/v1/models")
async def models(state: State) -> dict[str, object]:
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, state: State) -> dict[str, object]:
    if model != state.served_model_name:
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    return _model_card(state)


@router.get("/health")
async def health(state: State) -> JSONResponse:
    if not state.client.healthy():
        return JSONResponse({"status": "engine_dead"}, status_code=503)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok", "model": state.served_model_name})


@router.get("/metrics")
async def metrics(state: State) -> Response:
    stats = await state.client.stats()
    body = state.metrics.render(stats, state.client.num_aborted())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _count_requests(app: ASGIApp, metrics: ServingMetrics) -> RequestCounter:
    """Counts finished /v1 requests by endpoint and status."""

    def finished(scope: Scope, status: int) -> None:
        endpoint = scope["path"] if scope["path"] in _COUNTED_PATHS else "other"  # bounded label values
        metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()

    return RequestCounter(app, counted=lambda path: path.startswith("/v1/"), finished=finished)


def build_app(state: ServingState) -> FastAPI:
    """The worker's FastAPI app around an already started engine client (the caller owns its lifetime)."""
    app = FastAPI(title="moecloud worker", docs_url=None, redoc_url=None)
    app.state.serving = state
    app.include_router(router)
    app.include_router(reports.router)
    install_error_handlers(app)
    app.add_middleware(_count_requests, metrics=state.metrics)
    return app
