"""Requests and tokens per minute (per key and per tenant) and in-flight requests per key.

Token buckets that refill continuously: a limit of N per minute allows a burst of N, then N/60 per second.
State lives in this process; several gateway processes each enforce the full limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moecloud.gateway.errors import RateLimited
from moecloud.gateway.tenancy.auth import Caller


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60.0 / self.capacity)


@dataclass
class Admission:
    """A granted request: ``settle`` returns unused tokens and the concurrency slot, once."""

    limiter: RateLimiter
    caller: Caller
    reserved_tokens: int
    headers: dict[str, str]
    settled: bool = field(default=False)

    def settle(self, used_tokens: int) -> None:
        if not self.settled:
            self.settled = True
            self.limiter._release(self, used_tokens)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, int, str], _Bucket] = {}
        self._in_flight: dict[int, int] = {}

    def admit(self, caller: Caller, tokens: int) -> Admission:
        """Take one request and ``tokens`` from every applicable bucket, or raise ``RateLimited``."""
        now = self._clock()
        wanted = [
            ("key", caller.key_id, "requests", caller.key_limits.rpm, 1),
            ("key", caller.key_id, "tokens", caller.key_limits.tpm, tokens),
            ("tenant", caller.tenant_id, "requests", caller.tenant_limits.rpm, 1),
            ("tenant", caller.tenant_id, "tokens", caller.tenant_limits.tpm, tokens),
        ]
        takes = [
            (self._bucket(scope, owner, kind, limit, now), scope, kind, amount)
            for scope, owner, kind, limit, amount in wanted
            if limit
        ]
        headers = self._headers(caller, now)
        for bucket, scope, kind, amount in takes:
            if amount > bucket.capacity:
                raise RateLimited(
                    f"this request needs {amount} {kind} but the {scope} limit is {int(bucket.capacity)} per "
                    "minute; lower max_tokens or ask for a higher limit",
                    headers={**headers, "retry-after": "60"},
                )
            if bucket.level < amount:
                wait = math.ceil(bucket.seconds_until(amount))
                raise RateLimited(
                    f"rate limit reached for {kind} per minute on this {scope} "
                    f"(limit {int(bucket.capacity)}); retry in {wait}s",
                    headers={**headers, "retry-after": str(max(wait, 1))},
                )
        concurrency = caller.key_limits.max_concurrency
        if concurrency and self._in_flight.get(caller.key_id, 0) >= concurrency:
            raise RateLimited(
                f"too many concurrent requests on this key (limit {concurrency})",
                headers={**headers, "retry-after": "1"},
            )
        for bucket, _scope, _kind, amount in takes:
            bucket.level -= amount
        self._in_flight[caller.key_id] = self._in_flight.get(caller.key_id, 0) + 1
        return Admission(self, caller, tokens, self._headers(caller, now))

    def _release(self, admission: Admission, used_tokens: int) -> None:
        caller = admission.caller
        left = self._in_flight.get(caller.key_id, 1) - 1
        if left:
            self._in_flight[caller.key_id] = left
        else:
            self._in_flight.pop(caller.key_id, None)
        refund = admission.reserved_tokens - used_tokens
        now = self._clock()
        for scope, owner in (("key", caller.key_id), ("tenant", caller.tenant_id)):
            bucket = self._buckets.get((scope, owner, "tokens"))
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.capacity, bucket.level + refund)

    def _bucket(self, scope: str, owner: int, kind: str, limit: int, now: float) -> _Bucket:
        bucket = self._buckets.get((scope, owner, kind))
        if bucket is None or bucket.capacity != limit:
            bucket = self._buckets[(scope, owner, kind)] = _Bucket(float(limit), float(limit), now)
        bucket.refill(now)
        return bucket

    def _headers(self, caller: Caller, now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, limit in (("requests", caller.key_limits.rpm), ("tokens", caller.key_limits.tpm)):
            bucket = self._buckets.get(("key", caller.key_id, kind))
            if not limit or bucket is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(bucket.seconds_until(bucket.capacity))
        return headers


def _duration(seconds: float) -> str:
    """OpenAI's style: ``1s``, ``6m0s``, ``250ms``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
