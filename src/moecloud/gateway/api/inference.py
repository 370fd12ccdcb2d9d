"""The OpenAI-compatible routes tenants call: parse, authorise, limit, hold, forward, settle."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from moecloud.config import AdmissionSettings
from moecloud.gateway.admin.schemas import UsageOut
from moecloud.gateway.admin.service import usage_rows
from moecloud.gateway.api.deps import CallerDep, GatewayState, State
from moecloud.gateway.api.validation import CHAT_BODY, COMPLETION_BODY, RESPONSES_BODY, check_text, parse_body
from moecloud.gateway.errors import (
    ContentFiltered,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    UpstreamFailed,
)
from moecloud.gateway.fleet.catalog import Route
from moecloud.gateway.tenancy.auth import Caller
from moecloud.gateway.tenancy.metering import MeteredRequest, new_request_id
from moecloud.gateway.traffic.admission import Ticket
from moecloud.gateway.traffic.relay import ResponsesRelay, StreamRelay
from moecloud.gateway.traffic.router import affinity_key
from moecloud.gateway.traffic.screening import (
    SEPARATOR,
    Decision,
    StreamScreen,
    answer_slots,
    decide,
    prompt_slots,
    screen_slots_async,
)
from moecloud.pricing import TokenUsage, measure_input, measure_prompt
from moecloud.security import Policy
from moecloud.web.bounds import MAX_CHOICES
from moecloud.web.disconnect import unless_disconnected
from moecloud.web.errors import ClientDisconnected

router = APIRouter()
DEADLINE_HEADER = "x-moecloud-deadline"


@router.post("/v1/chat/completions", openapi_extra=CHAT_BODY)
async def chat_completions(request: Request, caller: CallerDep, state: State) -> Response:
    return await _forward(request, caller, state, "/chat/completions", prompt_field="messages")


@router.post("/v1/completions", openapi_extra=COMPLETION_BODY)
async def completions(request: Request, caller: CallerDep, state: State) -> Response:
    return await _forward(request, caller, state, "/completions", prompt_field="prompt")


@router.post("/v1/responses", openapi_extra=RESPONSES_BODY)
async def responses(request: Request, caller: CallerDep, state: State) -> Response:
    """The Responses API, metered like chat: the prompt is ``instructions`` and ``input``, the budget
    ``max_output_tokens``, the usage the response's (or its ``response.completed`` event's)."""
    return await _forward(request, caller, state, "/responses", prompt_field="input")


@router.get("/v1/models")
async def models(caller: CallerDep, state: State) -> dict[str, Any]:
    """Deployed models, then aliases with the model they route to as ``root`` (vLLM's field); each with its
    context length (``max_model_len``) where its upstream said it."""
    names = [name for name in await state.catalog.models() if caller.may_use(name)]
    aliases = sorted((await state.catalog.aliases()).items())
    cards = [await _card(state, name) for name in names]
    cards += [await _card(state, alias, target) for alias, target in aliases
              if caller.may_use(alias) or caller.may_use(target)]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, caller: CallerDep, state: State) -> dict[str, Any]:
    """One model (or alias) this key may use; any other is ``model_not_found``, as OpenAI answers."""
    target = (await state.catalog.aliases()).get(model)
    if target is not None and (caller.may_use(model) or caller.may_use(target)):
        return await _card(state, model, target)
    if target is None and model in await state.catalog.models() and caller.may_use(model):
        return await _card(state, model)
    raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")


async def _card(state: GatewayState, name: str, root: str | None = None) -> dict[str, Any]:
    card: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "moecloud"}
    if root is not None:
        card["root"] = root
    length = await state.catalog.context_length(root or name)
    if length is not None:
        card["max_model_len"] = length
    return card


@router.get("/v1/usage")
async def own_usage(
    caller: CallerDep, state: State, since: date | None = None, until: date | None = None, model: str | None = None
) -> UsageOut:
    """A tenant's own usage per day, key and model; the tenant is the key's, whatever the query says."""
    rows = await anyio.to_thread.run_sync(lambda: usage_rows(state.database, tenant_id=caller.tenant_id, model=model,
                                                             since=since, until=until))
    return UsageOut(data=rows)


async def _forward(request: Request, caller: Caller, state: GatewayState, path: str, *, prompt_field: str) -> Response:
    body = await _read_json(request, state.settings.gateway.max_body_bytes)
    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    _check_prompt(body, prompt_field)
    model = await state.catalog.resolve(requested)  # an alias is billed and answered as its model
    if not (caller.may_use(requested) or caller.may_use(model)):
        raise PermissionDenied(f"this API key may not use the model {requested!r}", param="model")
    request_id = new_request_id()
    screening = state.settings.screening
    policy = caller.policy if screening.enabled else None
    if policy is not None:
        await _screen_prompt(state, caller, policy, body, prompt_field, model, request_id)
    price = await state.catalog.price(model)
    request.state.model = model
    deadline = _deadline(request, state.settings.admission)
    billing = state.settings.billing
    stream = _flag(body, "stream")
    responses = prompt_field == "input"
    limit_field = "max_output_tokens" if responses else "max_tokens"
    max_tokens = ((_positive_int(body, limit_field) or billing.default_max_tokens) if responses
                  else _max_tokens(body, billing.default_max_tokens))
    if max_tokens > billing.max_tokens_limit:
        raise InvalidRequest(f"'{limit_field}' may be at most {billing.max_tokens_limit}", param=limit_field)
    choices = 1 if responses else _positive_int(body, "n") or 1
    if choices > MAX_CHOICES:
        raise InvalidRequest(f"'n' may be at most {MAX_CHOICES}", param="n")
    prompt = measure_input(body) if responses else measure_prompt(body)
    # the worst case: every prompt gets ``n`` choices of ``max_tokens`` each
    meter = MeteredRequest(state.metering, caller, model, price, prompt,
                           completion_budget=max_tokens * choices * prompt.prompts, request_id=request_id)
    request.state.meter = meter
    upstream_body = {**body, limit_field: max_tokens}
    upstream_body.pop("max_completion_tokens", None)
    client_options = body.get("stream_options")
    if stream and not responses:  # a typed stream always ends with its usage
        upstream_body["stream_options"] = {**(client_options if isinstance(client_options, dict) else {}),
                                           "include_usage": True}
    prefix = {"prompt": [body.get("instructions"), body.get("input")]} if responses else body
    ticket = Ticket(model, caller.tenant_id, caller.tenant_weight, caller.priority,
                    deadline=state.dispatcher.clock() + deadline,
                    affinity=affinity_key(prefix, state.settings.routing.affinity_prefix_bytes))

    def send(route: Route) -> Awaitable[Any]:
        meter.attempt(route)
        routed = {**upstream_body, "model": route.upstream_model}
        if stream:
            return state.upstream.open(route, path, routed, meter.request_id, stream=True)
        return state.upstream.post(route, path, routed, meter.request_id)

    wants_usage = isinstance(client_options, dict) and client_options.get("include_usage") is True
    return _Forwarded(state, meter, ticket, send, stream=stream, client_wants_usage=wants_usage,
                      responses=responses, policy=policy)


async def _screen_prompt(state: GatewayState, caller: Caller, policy: Policy, body: dict[str, Any], field: str,
                         model: str, request_id: str) -> None:
    """Screen the prompt's text under the caller's policy: redacted in ``body`` in place, or a 400
    ``content_filter`` when blocked (before any hold: it costs nothing). A decision is counted and audited."""
    slots = prompt_slots(body, field)
    raw = SEPARATOR.join(slot.text for slot in slots) if policy.keep_prompt else None
    decision = await screen_slots_async(slots, policy, "input")
    if decision is None:
        return
    await state.screening.record(decision, request_id=request_id, key=caller.key_public_id,
                                 tenant=caller.tenant_name, model=model, prompt=raw)
    if decision.blocked:
        raise ContentFiltered(f"the prompt was blocked by the screening policy: {', '.join(decision.categories)}",
                              param=decision.param, headers={"x-request-id": request_id})


class _Forwarded(Response):
    """The forwarding itself, run as the response so that one ``async with meter`` spans the whole request,
    a stream included; errors raised before the answer starts still reach the error handlers."""

    def __init__(self, state: GatewayState, meter: MeteredRequest, ticket: Ticket,
                 send: Callable[[Route], Awaitable[Any]], *, stream: bool, client_wants_usage: bool,
                 responses: bool, policy: Policy | None) -> None:
        super().__init__()
        self._state, self._meter, self._ticket, self._send = state, meter, ticket, send
        self._stream, self._client_wants_usage, self._responses = stream, client_wants_usage, responses
        self._policy = policy  # output screening's; None: off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, meter = self._state, self._meter
        try:
            async with meter:
                lease, answer = await unless_disconnected(receive, state.failover.first_answer(self._ticket,
                                                                                                self._send))
                meter.serve(lease)
                state.metrics.queue_wait.labels(meter.model).observe(lease.waited)
                if self._stream:
                    await self._relay(answer, lease.route, scope, receive, send)
                    return
                usage = self._usage(answer, lease.route)
                meter.answered(usage, "ok")
                answer["model"] = meter.model
                if self._policy is not None:
                    await self._screen_answer(answer, self._policy)
            await JSONResponse(answer, headers=meter.headers)(scope, receive, send)  # sent once settled
        except ClientDisconnected:
            return  # nobody is left to answer


    async def _relay(self, answer: Any, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self._state.settings.screening
        screen = None if self._policy is None else StreamScreen(self._policy, settings.stream_window_chars,
                                                                 settings.stream_tail_chars)
        kind = ResponsesRelay if self._responses else StreamRelay
        relay = kind(answer, self._meter, route, client_wants_usage=self._client_wants_usage, screen=screen)
        try:
            await relay.respond(self._meter.headers, scope, receive, send)
        finally:
            if screen is not None and screen.decision is not None:
                await self._record(screen.decision)

    async def _screen_answer(self, answer: dict[str, Any], policy: Policy) -> None:
        """Screen a whole answer (its items were checked by ``_usage``): redacted in place; a blocked choice
        loses its text and ends with ``finish_reason: content_filter``, a blocked response is ``incomplete``."""
        if self._responses:
            slots = answer_slots(answer["output"], responses=True)
            decision = await screen_slots_async(slots, policy, "output")
            if decision is not None and decision.blocked:
                for slot in slots:
                    slot.replace("")
                answer.update(status="incomplete", incomplete_details={"reason": "content_filter"})
        else:
            findings = []
            for choice in answer["choices"]:
                slots = answer_slots([choice], responses=False)
                found = await screen_slots_async(slots, policy, "output")
                if found is None:
                    continue
                findings += found.findings
                if found.blocked:
                    for slot in slots:
                        slot.replace("")
                    choice["finish_reason"] = "content_filter"
            decision = decide("output", findings, policy.output) if findings else None
        if decision is not None:
            await self._record(decision)

    async def _record(self, decision: Decision) -> None:
        meter = self._meter
        await self._state.screening.record(decision, request_id=meter.request_id, key=meter.caller.key_public_id,
                                           tenant=meter.caller.tenant_name, model=meter.model)

    def _usage(self, answer: dict[str, Any], route: Route) -> TokenUsage:
        """What a non-streamed answer reports it used, else its output estimated by size."""
        field = "output" if self._responses else "choices"
        items = answer.get(field)
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            # an answer without them is the upstream's failure
            raise UpstreamFailed(f"deployment {route.deployment!r} answered without a list of {field}")
        read = TokenUsage.from_responses if self._responses else TokenUsage.from_openai
        texts = [slot.text for slot in answer_slots(items, responses=self._responses, billed=True)]
        bytes_per_token = self._state.settings.billing.estimate_bytes_per_token
        return read(answer.get("usage")) or self._meter.estimated_usage(
            math.ceil(sum(len(text.encode()) for text in texts) / bytes_per_token))


def _max_tokens(body: dict[str, Any], default: int) -> int:
    """``max_tokens`` (or ``max_completion_tokens``); 0 only with ``echo``: scoring a prompt generates nothing."""
    if body.get("echo") is True and body.get("max_tokens") == 0 and not isinstance(body["max_tokens"], bool):
        return 0
    return _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens") or default


def _deadline(request: Request, settings: AdmissionSettings) -> float:
    """Seconds this request may wait for a replica: ``x-moecloud-deadline`` (capped), else the default."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return settings.default_deadline_seconds
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < math.inf:
        raise InvalidRequest(f"the {DEADLINE_HEADER} header must be a positive number of seconds")
    return min(seconds, settings.max_deadline_seconds)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        body = parse_body(b"".join(chunks))
    except (ValueError, RecursionError) as error:
        raise InvalidRequest("the request body is not valid JSON") from error
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    check_text(body)
    return body


def _check_prompt(body: dict[str, Any], field: str) -> None:
    value = body.get(field)
    if field == "input":
        if not isinstance(value, str | list) or (isinstance(value, list) and not value):
            raise InvalidRequest("'input' must be a string or a non-empty list of input items", param=field)
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a string", param="instructions")
    elif field == "messages":
        if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
            raise InvalidRequest("'messages' must be a non-empty list of message objects", param=field)
    elif not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise InvalidRequest("'prompt' must be a string or a non-empty list", param=field)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise InvalidRequest(f"'{name}' must be a boolean", param=name)
    return bool(value)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return value
