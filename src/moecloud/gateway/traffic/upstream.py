"""Speaking OpenAI's protocol to a deployment: one pooled HTTP client, upstream failures as typed errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx

from moecloud.config import GatewaySettings
from moecloud.gateway.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from moecloud.gateway.fleet.catalog import Route
from moecloud.web.aiohttp_transport import pooled_client
from moecloud.web.errors import APIError

log = logging.getLogger(__name__)


class Upstream:
    def __init__(self, settings: GatewaySettings) -> None:
        timeout = httpx.Timeout(
            settings.upstream_read_timeout_seconds, connect=settings.upstream_connect_timeout_seconds
        )
        self._client = pooled_client(timeout=timeout, max_connections=settings.upstream_max_connections,
                                     keepalive_seconds=settings.upstream_keepalive_seconds)

    async def post(self, route: Route, path: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        response = await self.open(route, path, body, request_id, stream=False)
        try:
            payload = response.json()
        except ValueError as error:
            raise _failed(UpstreamFailed, route, request_id, "answered with invalid JSON") from error
        if not isinstance(payload, dict):
            raise _failed(UpstreamFailed, route, request_id, "answered with a non-object")
        return payload

    async def open(
        self, route: Route, path: str, body: dict[str, Any], request_id: str, *, stream: bool
    ) -> httpx.Response:
        """Send the request; a non-2xx answer is raised as a typed error (and its stream closed)."""
        headers = {"x-request-id": request_id}
        if route.api_key:
            headers["authorization"] = f"Bearer {route.api_key}"
        request = self._client.build_request("POST", route.base_url + path, json=body, headers=headers)
        try:
            response = await self._client.send(request, stream=stream)
        except httpx.TimeoutException as error:
            raise UpstreamTimeout(f"deployment {route.deployment!r} did not answer in time") from error
        except httpx.HTTPError as error:
            raise _failed(UpstreamUnavailable, route, request_id, f"is unreachable: {error!r}") from error
        if response.is_success:
            return response
        try:
            await response.aread()
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        raise _refusal(route, response, request_id)

    async def final_usage(self, route: Route, request_id: str, timeout: float) -> Any:
        """Ask an engine worker for what it produced for a request the gateway cut short (aborting it there);
        the ``usage`` object it reports, or None where the upstream keeps no such report (a provider)."""
        headers = {"authorization": f"Bearer {route.api_key}"} if route.api_key else {}
        try:
            response = await self._client.post(f"{route.base_url}/requests/{request_id}/abort", headers=headers,
                                                timeout=timeout)
            return response.json().get("usage") if response.is_success else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    async def healthy(self, url: str, timeout: float, api_key: str | None = None) -> bool:
        """An active health check: does ``GET url`` answer 2xx within ``timeout``? (A local replica's
        ``/health``, which says its engine runs; a remote deployment's ``/models``, all it has.)"""
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = await self._client.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.is_success

    async def models(self, url: str, timeout: float, api_key: str | None = None) -> list[dict[str, Any]] | None:
        """``GET url`` (an OpenAI ``/models``): its model entries, None unless it answers 2xx in time (an
        answer that is not a list of models is an empty list: the upstream is up, but says nothing)."""
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            response = await self._client.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError:
            return None
        if not response.is_success:
            return None
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            return []
        return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []

    async def aclose(self) -> None:
        await self._client.aclose()


def _failed(kind: type[APIError], route: Route, request_id: str, detail: str) -> APIError:
    """What the tenant is told of an upstream failure: its kind and the request id; the detail (a worker's
    exception text, an address) goes to the operator's log only."""
    log.warning("request %s: deployment %r (%s) %s", request_id, route.deployment, route.replica, detail)
    reason = "could not be reached" if kind is UpstreamUnavailable else "failed"
    return kind(f"the model's server {reason}; request id {request_id}", headers={"x-request-id": request_id})


def _refusal(route: Route, response: httpx.Response, request_id: str) -> APIError:
    message = _upstream_message(response)
    if response.status_code == 429:
        return RateLimited(
            f"deployment {route.deployment!r} is busy: {message}",
            headers={"retry-after": response.headers.get("retry-after", "1")},
        )
    if response.status_code in (400, 413, 422):
        # the worker names the field and the kind (context_length_exceeded, unsupported_parameter): so do we,
        # since clients act on them (LangChain's context-overflow handling reads the code)
        error = _upstream_error(response)
        param, code = error.get("param"), error.get("code")
        refusal = InvalidRequest(message, param=param if isinstance(param, str) else None)
        if isinstance(code, str) and code:
            refusal.code = code
        return refusal
    return _failed(UpstreamFailed, route, request_id, f"failed ({response.status_code}): {message}")


def _upstream_error(response: httpx.Response) -> dict[str, Any]:
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _upstream_message(response: httpx.Response) -> str:
    message = _upstream_error(response).get("message")
    return message if isinstance(message, str) else response.text[:200] or response.reason_phrase
