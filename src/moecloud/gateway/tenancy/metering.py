"""One metered request's whole life: the owner of its rate-limit admission, its credit hold, its replica lease
and its settlement. Every exit of a request (done, failed, cancelled, client gone, upstream malformed) leaves
through ``MeteredRequest.__aexit__``, which settles or releases each of them exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from types import TracebackType

import anyio

from moecloud.config import BillingSettings
from moecloud.gateway.fleet.catalog import Route
from moecloud.gateway.tenancy.auth import Caller
from moecloud.gateway.tenancy.limits import Admission, RateLimiter
from moecloud.gateway.traffic.admission import Dispatcher, Lease
from moecloud.gateway.traffic.upstream import Upstream
from moecloud.pricing import PriceSheet, PromptSize, TokenUsage
from moecloud.store import Database
from moecloud.store.ledger import RequestOutcome, finish_request, place_hold, renew_hold
from moecloud.web.errors import ClientDisconnected

log = logging.getLogger(__name__)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass(frozen=True)
class Metering:
    """What every metered request of a gateway shares."""

    billing: BillingSettings
    database: Database
    limiter: RateLimiter
    dispatcher: Dispatcher  # whose replica leases a request gives back
    upstream: Upstream  # which asks a worker what it produced for a request


@dataclass(eq=False)
class MeteredRequest:
    """``async with meter:`` takes the admission and places the worst-case hold (raising 429 when either is
    refused) and keeps the hold renewed while the body runs; leaving settles the request once, whatever ended
    the body. After that, ``status``, ``usage`` and ``cost`` say what was billed (the access log reads them
    from ``request.state.meter``).

    The body tells the meter what happened: ``attempt(route)`` before sending upstream, ``serve(lease)`` once a
    replica answered, ``answered(usage, status)`` when it knows the outcome; streamed content is counted in
    ``counted_tokens``. Usage the upstream did not report is asked from the worker (what its engine produced,
    aborted requests included), else estimated.
    """

    metering: Metering
    caller: Caller
    model: str
    price: PriceSheet
    prompt: PromptSize
    completion_budget: int  # max_tokens x choices x prompts: the most output the request may bill
    request_id: str = field(default_factory=new_request_id)
    route: Route | None = None  # where it was last sent
    lease: Lease | None = None  # the replica slot it holds once an answer began
    counted_tokens: int = 0  # content chunks relayed: the output estimate when no usage can be learnt
    status: str | None = None  # ok | error | cancelled, once known
    usage: TokenUsage | None = None
    cost: Decimal | None = None
    headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _admission: Admission | None = None
    _renewal: asyncio.Task[None] | None = None
    _finished: bool = False

    async def __aenter__(self) -> MeteredRequest:
        billing = self.metering.billing
        self._admission = self.metering.limiter.admit(self.caller,
                                                      self.estimated_prompt_tokens() + self.completion_budget)
        self.headers = {"x-request-id": self.request_id, **self._admission.headers}
        worst = self.price.worst_case(
            self.prompt.tokens(billing.hold_bytes_per_token, billing.message_overhead_tokens), self.completion_budget
        )
        ttl = timedelta(seconds=billing.hold_ttl_seconds)

        def hold() -> None:
            with self.metering.database.write() as session:
                place_hold(session, self.caller.tenant_id, self.request_id, worst, ttl=ttl,
                           gateway=billing.gateway_name)

        try:
            await anyio.to_thread.run_sync(hold)
        except BaseException:
            self._admission.settle(0)
            raise
        self._renewal = asyncio.ensure_future(self._renew_forever(ttl))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            status = self.status or "ok"
        elif issubclass(kind, ClientDisconnected | asyncio.CancelledError):
            status = "cancelled"
        else:
            status = "error"
        await self.end(status)

    async def end(self, status: str) -> None:
        """Settle now, ahead of leaving (a stream settles before its last event, so a client that saw it
        complete was billed even if the gateway dies next); leaving then changes nothing."""
        with anyio.CancelScope(shield=True):  # a client that hangs up cannot skip its bill
            await self._finish(status)

    def attempt(self, route: Route) -> None:
        self.route = route

    def serve(self, lease: Lease) -> None:
        self.lease, self.route = lease, lease.route

    def answered(self, usage: TokenUsage | None, status: str) -> None:
        self.usage, self.status = usage, status

    def estimated_prompt_tokens(self) -> int:
        billing = self.metering.billing
        return self.prompt.tokens(billing.estimate_bytes_per_token, billing.message_overhead_tokens)

    def estimated_usage(self, completion_tokens: int) -> TokenUsage:
        """Used when nobody reported usage: the prompt by its size, the output as counted."""
        return TokenUsage(prompt_tokens=self.estimated_prompt_tokens(), cached_tokens=0,
                          completion_tokens=completion_tokens)

    async def _renew_forever(self, ttl: timedelta) -> None:
        """A hold lives as long as its request: pushed forward every third of its lifetime."""

        def renew() -> None:
            with self.metering.database.write() as session:
                renew_hold(session, self.request_id, ttl=ttl)

        while True:
            await asyncio.sleep(ttl.total_seconds() / 3)
            try:
                await anyio.to_thread.run_sync(renew)
            except Exception:  # the next renewal tries again; the hold is only released after a whole ttl
                log.exception("could not renew the hold of request %s", self.request_id)

    async def _finish(self, status: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        if self.lease is not None:
            self.metering.dispatcher.release(self.lease, ok=status != "error")
        usage = self.usage
        if usage is None and self.route is not None and (self.lease is not None or status == "cancelled"):
            reported = await self.metering.upstream.final_usage(
                self.route, self.request_id, self.metering.billing.usage_report_timeout_seconds
            )
            usage = TokenUsage.from_openai(reported) or self.estimated_usage(self.counted_tokens)
        self.usage = usage = usage or TokenUsage(0, 0, 0)
        self.status, self.cost = status, self.price.cost(usage)
        await self._settle()

    async def _settle(self) -> None:
        """Charge the usage, release the hold, record the usage row, give back the admission."""
        assert self.usage is not None and self.cost is not None and self.status is not None
        outcome = RequestOutcome(
            request_id=self.request_id,
            tenant_id=self.caller.tenant_id,
            key_id=self.caller.key_id,
            model=self.model,
            deployment=self.route.deployment if self.route else None,
            prompt_tokens=self.usage.prompt_tokens,
            cached_tokens=self.usage.cached_tokens,
            completion_tokens=self.usage.completion_tokens,
            latency_ms=round((time.monotonic() - self.started) * 1000),
            status=self.status,
            cost=self.cost,
        )

        def settle() -> None:
            with self.metering.database.write() as session:
                finish_request(session, outcome)

        assert self._admission is not None
        self._admission.settle(self.usage.total)
        try:
            await anyio.to_thread.run_sync(settle)
        except Exception:  # the hold stays until its gateway restarts or it expires; logged to reconcile by hand
            log.exception("could not settle request %s", self.request_id)
