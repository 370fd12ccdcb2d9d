"""Everything a gateway process holds, built once at start and reached through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from moecloud.config import Settings
from moecloud.gateway.errors import AuthenticationFailed
from moecloud.gateway.fleet.catalog import Catalog
from moecloud.gateway.fleet.control import ControlLoop
from moecloud.gateway.tenancy.auth import Authenticator, Caller, bearer_token, is_admin
from moecloud.gateway.tenancy.credentials import GatewaySecrets
from moecloud.gateway.tenancy.limits import RateLimiter
from moecloud.gateway.tenancy.metering import Metering
from moecloud.gateway.tenancy.sessions import SESSION_COOKIE, ConsoleSessions, SignedIn
from moecloud.gateway.traffic.admission import Dispatcher
from moecloud.gateway.traffic.failover import Failover
from moecloud.gateway.traffic.metrics import GatewayMetrics
from moecloud.gateway.traffic.screening import ScreeningRecorder
from moecloud.gateway.traffic.upstream import Upstream
from moecloud.store import Database


@dataclass
class GatewayState:
    settings: Settings
    database: Database
    secrets: GatewaySecrets
    authenticator: Authenticator
    limiter: RateLimiter
    catalog: Catalog
    upstream: Upstream
    dispatcher: Dispatcher
    failover: Failover
    metrics: GatewayMetrics
    control: ControlLoop
    metering: Metering
    screening: ScreeningRecorder  # where screening decisions are counted and audited
    sessions: ConsoleSessions  # the console's sign-in cookies


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


State = Annotated[GatewayState, Depends(get_state)]


def client_address(request: Request) -> str:
    """Whom failed authentications are counted against (uvicorn takes X-Forwarded-For from trusted proxies only)."""
    return request.client.host if request.client else "unknown"


async def console_session(request: Request, state: GatewayState) -> SignedIn | None:
    """The live console session of the request's cookie, CSRF-checked for changes; None without a cookie.

    Only for requests without an Authorization header: a header is judged alone, the cookie then ignored.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    signed_in = await state.sessions.resolve(token)
    signed_in.check_csrf(request.method, request.headers.get("x-csrf-token"))
    return signed_in


async def get_caller(request: Request, state: State, authorization: Annotated[str | None, Header()] = None) -> Caller:
    signed_in = None if authorization is not None else await console_session(request, state)
    if signed_in is None:
        caller = await state.authenticator.authenticate(bearer_token(authorization), client_address(request))
    elif signed_in.caller is None:
        raise AuthenticationFailed("an admin console session has no tenant: sign in with a tenant's key for /v1")
    else:
        caller = signed_in.caller
    request.state.caller = caller  # for the access line
    return caller


async def require_admin(request: Request, state: State, authorization: Annotated[str | None, Header()] = None) -> str:
    """Returns the actor name written to the audit log."""
    signed_in = None if authorization is not None else await console_session(request, state)
    if signed_in is not None and signed_in.caller is None:
        return signed_in.actor
    if signed_in is not None or not is_admin(bearer_token(authorization), state.secrets.admin_key):
        address = client_address(request)
        state.authenticator.check_failures(address)
        state.authenticator.failed(address)
        raise AuthenticationFailed("this endpoint needs the admin key")
    return "admin-api"


CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[str, Depends(require_admin)]
