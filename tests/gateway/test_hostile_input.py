"""Malformed or hostile requests get a 4xx in OpenAI's error shape, never a 500."""

from __future__ import annotations

import httpx
import pytest
from harness import MODEL, Gateway
from real_worker import ENGINE_MODEL, assert_served

from moecloud.serving.worker import RunningWorker

BAD_BODIES = [
    b"not json",
    b"[1, 2]",
    b'{"model": 5, "messages": []}',
    b'{"model": "fake-model"}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999999999999}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "n": 1000}',
    b'{"model": "fake-model", "messages": "' + b"[" * 100_000 + b'"}',
    b"[" * 100_000,
    b'{"model": "fake-model", "prompt": [[1, 2], 3, {"x": 1}], "max_tokens": true}',
]


@pytest.fixture
def key(gateway: Gateway) -> str:
    gateway.tenant("acme")
    return gateway.key("acme")


def test_bad_bodies_are_400s(gateway: Gateway, key: str) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        for body in BAD_BODIES:
            response = httpx.post(gateway.url + path, content=body,
                                  headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
            assert 400 <= response.status_code < 500, (path, body[:80], response.text)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert gateway.balance("acme") == 10


def test_oversized_body_and_bad_admin_input(gateway: Gateway, key: str) -> None:
    huge = b'{"model": "fake-model", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    response = httpx.post(gateway.url + "/v1/completions", content=huge, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    for method, path, payload in [
        ("POST", "/admin/tenants", {"name": "../../etc"}),
        ("POST", "/admin/tenants", {"name": "acme"}),
        ("POST", "/admin/credits", {"tenant": "acme", "amount": "0.0000000001"}),
        ("POST", "/admin/credits", {"tenant": "nobody", "amount": "1"}),
        ("POST", "/admin/keys", {"tenant": "acme", "name": "x", "rpm": 0}),
        ("PUT", "/admin/prices/m", {"input_miss": "-1", "input_hit": "0", "output": "0"}),
        ("POST", "/admin/keys/key_nope/revoke", None),
        ("GET", "/admin/nothing-here", None),
    ]:
        answer = gateway.admin.request(method, path, json=payload)
        assert 400 <= answer.status_code < 500, (path, answer.text)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert gateway.admin.get("/admin/tenants", headers={"authorization": f"Bearer {key}"}).status_code == 401
    assert httpx.get(gateway.url + "/admin/tenants").status_code == 401
    assert httpx.get(gateway.url + f"/v1/models?model={MODEL}", headers={"authorization": "Basic x"}).status_code == 401


NUL_INPUTS = [  # (method, path, body, param): PostgreSQL's text refuses NUL; each was a 500 there
    ("POST", "/admin/keys", {"tenant": "acme", "name": "a\x00b"}, "name"),
    ("POST", "/admin/keys", {"tenant": "acme", "name": "k", "models": ["m\x00"]}, "models"),
    ("POST", "/admin/credits", {"tenant": "acme", "amount": "1", "note": "\x00"}, "note"),
    ("PUT", "/admin/aliases/a", {"model": "m", "note": "x\x00"}, "note"),
    ("POST", "/admin/deployments", {"name": "d", "model": "m\x00", "base_url": "https://h.example/v1"}, "model"),
]


def test_a_nul_character_in_a_stored_field_is_a_400_naming_it_on_either_store(gateway: Gateway, key: str) -> None:
    for method, path, body, param in NUL_INPUTS:
        answer = gateway.admin.request(method, path, json=body)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["error"]["param"].startswith(param), answer.text
    own = httpx.post(gateway.url + "/v1/account/keys", json={"name": "\x00"},
                     headers={"authorization": f"Bearer {key}"})
    assert own.status_code == 400 and own.json()["error"]["param"] == "name", own.text
    assert [k["name"] for k in gateway.call("GET", "/admin/keys", params={"tenant": "acme"})] == ["k"]
    for method, path, part in [("PUT", "/admin/prices/a%00b", "path"), ("GET", "/admin/credits/a%00", "path"),
                               ("DELETE", "/admin/tenants/%00", "path"), ("GET", "/admin/usage?tenant=a%00", "query"),
                               ("POST", "/admin/keys/k%00/revoke", "path"), ("GET", "/v1/models?x=%00", "query")]:
        answer = gateway.admin.request(method, path, json={"input_miss": "1", "input_hit": "1", "output": "1"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == part, (path, answer.text)


ENGINE_KILLERS = [  # (extra fields, param): each stopped the engine behind `moecloud serve` for good
    ({"stop_token_ids": [1_000_000_000], "min_tokens": 1}, "stop_token_ids[0]"),
    ({"stop_token_ids": [-1_000_000], "min_tokens": 1}, "stop_token_ids[0]"),
    ({"repetition_penalty": 1e-45}, "repetition_penalty"),
    ({"logit_bias": {"1000000": 1}}, "logit_bias.1000000"),
]


def test_engine_killers_through_the_gateway_are_400s_and_the_engine_lives(
    engine_gateway: Gateway, engine_worker: RunningWorker
) -> None:
    key = engine_gateway.key("acme")
    headers = {"authorization": f"Bearer {key}"}
    chat = {"model": ENGINE_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    for extra, param in ENGINE_KILLERS:
        response = httpx.post(engine_gateway.url + "/v1/chat/completions", json={**chat, **extra},
                              headers=headers, timeout=60)
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"]["param"] == param
        assert_served(engine_gateway, key, engine_worker)
    for extra in ({"temperature": 1e-45}, {"top_p": 5e-324}):
        response = httpx.post(engine_gateway.url + "/v1/chat/completions", json={**chat, **extra},
                              headers=headers, timeout=60)
        assert response.status_code == 200, (extra, response.text)
        assert_served(engine_gateway, key, engine_worker)


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["\\udfff"]}', "stop[0]"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "user": "\\ud800"}', "user"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),
])
def test_text_that_is_not_unicode_or_json_is_a_400_at_the_gateway(
    engine_gateway: Gateway, engine_worker: RunningWorker, raw: bytes, param: str | None
) -> None:
    key = engine_gateway.key("acme")
    response = httpx.post(engine_gateway.url + "/v1/chat/completions", content=raw, timeout=60,
                          headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["param"] == param
    assert_served(engine_gateway, key, engine_worker)
