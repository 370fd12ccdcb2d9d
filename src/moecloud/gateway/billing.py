"""One metered request: its hold before forwarding and its single settlement afterwards."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import anyio

from moecloud.config import BillingSettings
from moecloud.gateway.auth import Caller
from moecloud.gateway.catalog import Route
from moecloud.gateway.limits import Admission
from moecloud.gateway.metering import PriceSheet, PromptSize, TokenUsage
from moecloud.store import Database
from moecloud.store.ledger import RequestOutcome, finish_request, place_hold

log = logging.getLogger(__name__)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass
class MeteredRequest:
    """Created once the hold is placed; ``finish`` settles it exactly once, whatever happened."""

    database: Database
    billing: BillingSettings
    caller: Caller
    model: str
    price: PriceSheet
    request_id: str
    prompt: PromptSize
    admission: Admission
    route: Route | None = None  # where it was served, once a replica took it
    started: float = field(default_factory=time.monotonic)
    finished: bool = False
    usage: TokenUsage | None = None  # what was charged, once finished (the access line reads it)
    cost: Decimal | None = None

    @classmethod
    async def open(
        cls,
        database: Database,
        billing: BillingSettings,
        caller: Caller,
        model: str,
        price: PriceSheet,
        prompt: PromptSize,
        completion_budget: int,
        admission: Admission,
    ) -> MeteredRequest:
        """Place the worst-case hold; on refusal the admission is given back and the error propagates."""
        request_id = new_request_id()
        worst = price.worst_case(
            prompt.tokens(billing.hold_bytes_per_token, billing.message_overhead_tokens), completion_budget
        )
        ttl = timedelta(seconds=billing.hold_ttl_seconds)

        def hold() -> None:
            with database.write() as session:
                place_hold(session, caller.tenant_id, request_id, worst, ttl=ttl)

        try:
            await anyio.to_thread.run_sync(hold)
        except BaseException:
            admission.settle(0)
            raise
        return cls(database, billing, caller, model, price, request_id, prompt, admission)

    def estimated_usage(self, completion_tokens: int) -> TokenUsage:
        """Used when the upstream reported no usage (a dropped stream): the prompt by size, output as counted."""
        prompt = self.prompt.tokens(self.billing.estimate_bytes_per_token, self.billing.message_overhead_tokens)
        return TokenUsage(prompt_tokens=prompt, cached_tokens=0, completion_tokens=completion_tokens)

    async def finish(self, usage: TokenUsage | None, status: str) -> None:
        """Settle: charge ``usage`` (nothing when None), release the hold, record usage. Runs once; shielded
        from cancellation so a client that hangs up cannot skip its bill."""
        if self.finished:
            return
        self.finished = True
        usage = usage or TokenUsage(0, 0, 0)
        outcome = RequestOutcome(
            request_id=self.request_id,
            tenant_id=self.caller.tenant_id,
            key_id=self.caller.key_id,
            model=self.model,
            deployment=self.route.deployment if self.route else None,
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=round((time.monotonic() - self.started) * 1000),
            status=status,
            cost=self.price.cost(usage),
        )
        self.usage, self.cost = usage, outcome.cost

        def settle() -> None:
            with self.database.write() as session:
                finish_request(session, outcome)

        self.admission.settle(usage.total)
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(settle)
            except Exception:  # the hold stays and expires; logged so an operator can reconcile by hand
                log.exception("could not settle request %s", self.request_id)
