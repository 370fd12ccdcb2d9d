"""Pure pieces: prompt sizing, cost rounding, token buckets, expiry parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from moecloud.cli.options import parse_expiry
from moecloud.gateway.errors import RateLimited
from moecloud.gateway.tenancy.auth import Caller, Limits
from moecloud.gateway.tenancy.limits import RateLimiter
from moecloud.pricing import PriceSheet, TokenUsage, measure_prompt


def test_prompt_measure_counts_text_token_ids_and_messages() -> None:
    size = measure_prompt({"messages": [{"role": "user", "content": "héllo"}, {"role": "system", "content": "ab"}]})
    assert (size.text_bytes, size.known_tokens, size.messages) == (8, 0, 2)
    assert size.tokens(1.0, 8) == 24 and size.tokens(4.0, 8) == 18
    assert measure_prompt({"prompt": [[1, 2, 3], [4]]}).tokens(1.0, 8) == 4


def test_cost_rounds_half_up_once_and_holds_round_up() -> None:
    price = PriceSheet(Decimal("0.27"), Decimal("0.07"), Decimal("1.10"))
    assert price.cost(TokenUsage(prompt_tokens=3, cached_tokens=1, completion_tokens=1)) == Decimal("0.000001710")
    fine = PriceSheet(Decimal("0.0005"), Decimal("0.0004"), Decimal("0"))  # 5e-10 and 4e-10 per token
    assert fine.cost(TokenUsage(1, 0, 0)) == Decimal("0.000000001")  # half rounds up
    assert fine.cost(TokenUsage(1, 1, 0)) == Decimal("0")
    assert fine.worst_case(1, 0) == Decimal("0.000000001")
    assert fine.worst_case(0, 0) == Decimal("0")
    assert TokenUsage.from_openai({"prompt_tokens": -1, "completion_tokens": 2}) is None


def _caller(rpm: int | None, tpm: int | None, concurrency: int | None = None) -> Caller:
    return Caller(key_id=1, key_public_id="key_1", tenant_id=1, tenant_name="t", models=None, expires_at=None,
                  revoked=False, key_limits=Limits(rpm, tpm, concurrency), tenant_limits=Limits(None, None))


def test_token_buckets_refill_and_report_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    caller = _caller(rpm=60, tpm=100)
    admitted = limiter.admit(caller, 90)
    with pytest.raises(RateLimited) as limited:
        limiter.admit(caller, 20)
    assert limited.value.headers["retry-after"] == "6"
    admitted.settle(50)  # used less than reserved: 40 tokens come back
    limiter.admit(caller, 20).settle(20)
    now[0] = 60.0
    assert limiter.admit(caller, 100).headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited, match="limit is 100"):
        limiter.admit(caller, 101)


def test_concurrency_slots_are_returned() -> None:
    limiter = RateLimiter()
    caller = _caller(rpm=None, tpm=None, concurrency=1)
    first = limiter.admit(caller, 1)
    with pytest.raises(RateLimited, match="concurrent"):
        limiter.admit(caller, 1)
    first.settle(1)
    first.settle(1)
    limiter.admit(caller, 1)


def test_expiry_parsing() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_expiry("30d", now=now) == now + timedelta(days=30)
    assert parse_expiry("2025-02-01") == datetime(2025, 2, 1, tzinfo=UTC)
    assert parse_expiry(None) is None


def test_gateway_never_imports_torch_or_the_engine() -> None:
    import subprocess
    import sys

    code = "import sys, moecloud.cli, moecloud.gateway.app; print(sorted(m for m in sys.modules if m == 'torch' " \
           "or m.startswith('moecloud.engine')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
