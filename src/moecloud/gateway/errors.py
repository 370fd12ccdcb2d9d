"""Typed gateway errors and the one place they become HTTP responses (OpenAI's error shape)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moecloud.store.errors import AlreadyExists, InsufficientCredit, InvalidValue, NotFound, StoreError

log = logging.getLogger(__name__)


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class AuthenticationFailed(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PaymentRequired(GatewayError):
    status, type, code = 402, "insufficient_quota", "insufficient_credit"


class PermissionDenied(GatewayError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class ResourceNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(ResourceNotFound):
    code = "model_not_found"


class Conflict(GatewayError):
    status, type, code = 409, "invalid_request_error", "already_exists"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class UpstreamFailed(GatewayError):
    status, type, code = 502, "api_error", "upstream_error"


class UpstreamUnavailable(GatewayError):
    status, type, code = 503, "api_error", "upstream_unavailable"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "api_error", "upstream_timeout"


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_store_error(error: StoreError) -> GatewayError:
    if isinstance(error, InsufficientCredit):
        return PaymentRequired(str(error))
    if isinstance(error, NotFound):
        return ResourceNotFound(str(error))
    if isinstance(error, AlreadyExists):
        return Conflict(str(error))
    if isinstance(error, InvalidValue):
        return InvalidRequest(str(error))
    return GatewayError(str(error))


def _respond(error: GatewayError) -> JSONResponse:
    body = error_body(error.message, error.type, error.code, error.param)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, GatewayError)
        return _respond(error)

    async def store_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StoreError)
        return _respond(from_store_error(error))

    async def validation_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return _respond(InvalidRequest(f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param))

    async def http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        kind = "not_found" if error.status_code == 404 else "http_error"
        body = error_body(str(error.detail), "invalid_request_error", kind)
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    async def unexpected_error(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return _respond(GatewayError("internal error in the gateway"))

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
