"""Every way a request can end leaves through one exit: its hold is gone, its key's concurrency slot is free and
exactly one usage row is written, whatever happened (done, failed, upstream malformed, client gone, stream cut)."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import openai
import pytest
from harness import MODEL, Gateway


def chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def done(client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=chat("plain"), max_tokens=3)


def failed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=chat("FAIL"), max_tokens=3)


def malformed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError, match="without a list of choices"):
        client.chat.completions.create(model=MODEL, messages=chat("MALFORMED"), max_tokens=3)


def wrong_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError, match="without a list of choices"):
        client.completions.create(model=MODEL, prompt="BADTYPES", max_tokens=3)


def client_gone_waiting(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):  # the client gives up while the upstream is silent
        client.with_options(timeout=0.5).chat.completions.create(model=MODEL, messages=chat("HANG"), max_tokens=3)


def client_gone_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=chat("HANG_AFTER_3"), max_tokens=30, stream=True)
    next(stream)
    stream.close()


def stream_cut_upstream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError, match="dropped the stream"):  # the error event the gateway sends
        list(client.chat.completions.create(model=MODEL, messages=chat("DIE_AFTER_2"), max_tokens=30, stream=True))


def stream_done(client: openai.OpenAI) -> None:
    list(client.chat.completions.create(model=MODEL, messages=chat("go"), max_tokens=4, stream=True))


EXITS: dict[str, tuple[Callable[[openai.OpenAI], None], str]] = {
    "done": (done, "ok"),
    "failed": (failed, "error"),
    "malformed": (malformed, "error"),
    "wrong_types": (wrong_types, "error"),
    "client_gone_waiting": (client_gone_waiting, "cancelled"),
    "client_gone_streaming": (client_gone_streaming, "cancelled"),
    "stream_cut_upstream": (stream_cut_upstream, "error"),
    "stream_done": (stream_done, "ok"),
}


@pytest.mark.parametrize("exit_name", list(EXITS))
def test_every_exit_settles_once_and_frees_everything(gateway: Gateway, exit_name: str) -> None:
    end, status = EXITS[exit_name]
    gateway.tenant("acme", credit="1")
    key = gateway.key("acme", max_concurrency=1)  # a leaked slot would refuse the next request
    client = gateway.client(key, timeout=10)
    end(client)
    [row] = gateway.wait_for_usage("acme", 1)
    assert row["requests"] == 1
    records = _records(gateway)
    assert [r.status for r in records] == [status]
    credits = gateway.call("GET", "/admin/credits/acme", params={"entries": 100})
    assert Decimal(credits["held"]) == 0
    assert Decimal(credits["balance"]) == Decimal(1) - records[0].cost
    reply = httpx.post(gateway.url + "/v1/completions", headers={"authorization": f"Bearer {key}"},
                       json={"model": MODEL, "prompt": "next", "max_tokens": 1}, timeout=10)
    assert reply.status_code == 200, reply.text  # the slot came back
    assert len(_records(gateway)) == 2


def test_a_hold_is_renewed_while_its_request_runs(make_gateway) -> None:  # type: ignore[no-untyped-def]
    ttl = 0.6
    gateway = make_gateway(billing={"hold_ttl_seconds": ttl, "reconcile_interval_seconds": ttl / 6})
    gateway.tenant("acme", credit="1")
    client = gateway.client(gateway.key("acme"), timeout=10)
    stream = client.chat.completions.create(model=MODEL, messages=chat("HANG_AFTER_3"), max_tokens=30, stream=True)
    next(stream)
    held = Decimal(gateway.call("GET", "/admin/credits/acme")["held"])
    assert held > 0
    first_expiry = _expiry(gateway)
    until = time.monotonic() + 4 * ttl  # unrenewed, the reconciler would release it after one ttl
    while time.monotonic() < until:
        assert Decimal(gateway.call("GET", "/admin/credits/acme")["held"]) == held
        time.sleep(ttl / 12)
    assert _expiry(gateway) > first_expiry
    stream.close()
    gateway.wait_for_usage("acme", 1)
    assert Decimal(gateway.call("GET", "/admin/credits/acme")["held"]) == 0
    assert [r.status for r in _records(gateway)] == ["cancelled"]


def _expiry(gateway: Gateway):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from moecloud.store.tables import Hold

    with gateway.database.read() as session:
        return session.scalar(select(Hold.expires_at).where(Hold.status == "held"))


def _records(gateway: Gateway) -> list:  # type: ignore[type-arg]
    from sqlalchemy import select

    from moecloud.store.tables import UsageRecord

    with gateway.database.read() as session:
        return list(session.scalars(select(UsageRecord).order_by(UsageRecord.id)))
