"""Typed gateway errors and the one place they become HTTP responses (OpenAI's error shape)."""

from __future__ import annotations

from fastapi import FastAPI

from moecloud.store.errors import AlreadyExists, InsufficientCredit, InvalidValue, NotFound, StoreError
from moecloud.web.errors import APIError
from moecloud.web.errors import install_error_handlers as install_error_handlers_for


class GatewayError(APIError):
    """Every error the gateway reports (500 unless a subclass says otherwise)."""


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class AuthenticationFailed(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class QuotaExceeded(GatewayError):
    """Out of credit: OpenAI answers 429 ``insufficient_quota``, which its SDKs raise as a typed error."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"


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


class ModelUnavailable(UpstreamUnavailable):
    """No replica of a local deployment is up, and none can come up before the request's deadline."""

    code = "model_unavailable"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "api_error", "upstream_timeout"


def from_store_error(error: Exception) -> GatewayError:
    if isinstance(error, InsufficientCredit):
        return QuotaExceeded(str(error))
    if isinstance(error, NotFound):
        return ResourceNotFound(str(error))
    if isinstance(error, AlreadyExists):
        return Conflict(str(error))
    if isinstance(error, InvalidValue):
        return InvalidRequest(str(error))
    return GatewayError(str(error))


def install_error_handlers(app: FastAPI) -> None:
    install_error_handlers_for(
        app, lambda message, param: InvalidRequest(message, param=param), {StoreError: from_store_error}
    )
