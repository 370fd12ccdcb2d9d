"""Console sign-in: the session cookie (POST/GET/DELETE /console/api/session)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, field_validator

from moecloud.gateway.api.deps import GatewayState, State, client_address, console_session
from moecloud.gateway.errors import AuthenticationFailed
from moecloud.gateway.tenancy.sessions import SESSION_COOKIE, SignedIn

router = APIRouter(prefix="/console/api")


class SignInIn(BaseModel):
    key: str = Field(min_length=1, max_length=1024, description="the admin key or a tenant's API key")

    @field_validator("key")
    @classmethod
    def _encodable(cls, key: str) -> str:
        key.encode()  # a lone surrogate (valid in JSON, not in UTF-8) raises here: a 400, not a 500 later
        return key


class SessionOut(BaseModel):
    role: Literal["admin", "tenant"]
    tenant: str | None
    key_id: str | None
    csrf_token: str = Field(description="send it back as X-CSRF-Token with every change made with the cookie")
    expires_at: datetime


@router.post("/session")
async def sign_in(spec: SignInIn, request: Request, response: Response, state: State) -> SessionOut:
    """Sign in with a key: sets the ``moecloud_session`` cookie; a wrong key is a 401 (and counts as a failure)."""
    token, signed_in = await state.sessions.sign_in(spec.key, client_address(request))
    response.set_cookie(SESSION_COOKIE, token, max_age=math.ceil(state.settings.console.session_ttl_seconds),
                        path="/", secure=_secure(request, state), httponly=True, samesite="strict")
    return _session_out(signed_in)


@router.get("/session")
async def current_session(request: Request, state: State) -> SessionOut:
    return _session_out(await _live_session(request, state))


@router.delete("/session", status_code=204)
async def sign_out(request: Request, state: State) -> Response:
    """End the cookie's session (the change needs its X-CSRF-Token) and clear the cookie."""
    signed_in = await _live_session(request, state)
    await state.sessions.sign_out(request.cookies[SESSION_COOKIE], signed_in)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request, state), httponly=True,
                           samesite="strict")
    return response


async def _live_session(request: Request, state: GatewayState) -> SignedIn:
    signed_in = await console_session(request, state)
    if signed_in is None:
        raise AuthenticationFailed("no console session: sign in first")
    return signed_in


def _secure(request: Request, state: GatewayState) -> bool:
    configured = state.settings.console.cookie_secure
    return request.url.scheme == "https" if configured is None else configured


def _session_out(signed_in: SignedIn) -> SessionOut:
    caller = signed_in.caller
    return SessionOut(role="admin" if caller is None else "tenant",
                      tenant=None if caller is None else caller.tenant_name,
                      key_id=None if caller is None else caller.key_public_id,
                      csrf_token=signed_in.csrf_token, expires_at=signed_in.expires_at)
