"""The gateway's own typed errors (those both edges raise are in ``moecloud.web.errors``) and the one place
they become HTTP responses (OpenAI's error shape)."""

from __future__ import annotations

from fastapi import FastAPI

from moecloud.store.errors import AlreadyExists, InsufficientCredit, InvalidValue, NotFound, StoreError
from moecloud.web.errors import APIError, InvalidRequest, ModelNotFound, RateLimited, ResourceNotFound
from moecloud.web.errors import install_error_handlers as install_error_handlers_for

__all__ = ["InvalidRequest", "ModelNotFound", "RateLimited", "ResourceNotFound"]  # raised here as the gateway's


class AuthenticationFailed(APIError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class QuotaExceeded(APIError):
    """Out of credit: OpenAI answers 429 ``insufficient_quota``, which its SDKs raise as a typed error."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"


class PermissionDenied(APIError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class CsrfFailed(APIError):
    """A change made with the console's session cookie without the session's ``X-CSRF-Token``."""

    status, type, code = 403, "permission_error", "csrf_failed"


class Conflict(APIError):
    status, type, code = 409, "invalid_request_error", "already_exists"


class ContentFiltered(APIError):
    """A prompt the screening policy blocks: 400 ``content_filter``, as OpenAI's own moderation answers."""

    status, type, code = 400, "invalid_request_error", "content_filter"


class PayloadTooLarge(APIError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UpstreamFailed(APIError):
    status, type, code = 502, "api_error", "upstream_error"


class UpstreamUnavailable(APIError):
    status, type, code = 503, "api_error", "upstream_unavailable"


class ModelUnavailable(UpstreamUnavailable):
    """No replica of a local deployment is up, and none can come up before the request's deadline."""

    code = "model_unavailable"


class UpstreamTimeout(APIError):
    status, type, code = 504, "api_error", "upstream_timeout"


def from_store_error(error: Exception) -> APIError:
    if isinstance(error, InsufficientCredit):
        return QuotaExceeded(str(error))
    if isinstance(error, NotFound):
        return ResourceNotFound(str(error))
    if isinstance(error, AlreadyExists):
        return Conflict(str(error))
    if isinstance(error, InvalidValue):
        return InvalidRequest(str(error))
    return APIError(str(error))


def install_error_handlers(app: FastAPI) -> None:
    install_error_handlers_for(app, {StoreError: from_store_error})
