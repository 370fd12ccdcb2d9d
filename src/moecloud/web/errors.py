"""OpenAI's error shape, shared by the engine worker and the gateway: typed errors become
``{"error": {"message", "type", "param", "code"}}`` responses in one place per app.

The errors both edges raise live here, once; each edge adds only its own (``serving.errors``,
``gateway.errors``). No torch and no store here: both HTTP layers import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """Base of every error an API reports; subclasses fix the status, OpenAI error type and code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(APIError):
    status, type = 400, "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, param: str, detail: str = "is not supported by this server") -> None:
        super().__init__(f"'{param}' {detail}", param=param)


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    @classmethod
    def for_request(
        cls, prompt_tokens: int, max_model_len: int, max_tokens: int | None = None
    ) -> ContextLengthExceeded:
        if max_tokens is None:
            return cls(
                f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
                f"{prompt_tokens} tokens (at least one must be left to generate).",
                param="prompt",
            )
        return cls(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{prompt_tokens} tokens and max_tokens is {max_tokens} ({prompt_tokens + max_tokens} "
            "in all).",
            param="max_tokens",
        )


class ResourceNotFound(APIError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(ResourceNotFound):
    code = "model_not_found"


class RateLimited(APIError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class ClientDisconnected(APIError):
    """The client went away before the reply; nobody reads the response (499 as nginx logs it)."""

    status, type, code = 499, "client_closed_request", "client_disconnected"

    def __init__(self) -> None:
        super().__init__("the client closed the connection")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.message, error.type, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers or None)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def validation_param(loc: tuple[object, ...]) -> str | None:
    """The field path of a validation error as OpenAI writes it (``messages[0].content``), without where it
    came from ("body", "query", "path") and the union-member tags pydantic adds."""
    path = ""
    for part in loc[1:] if loc[:1] in (("body",), ("query",), ("path",)) else loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part):
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or None


def invalid_request(error: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) for FastAPI's validation error: OpenAI answers these with a 400, not a 422."""
    # Of a union's failed members, the one that got deepest names the field best (a list of parts, not "str").
    errors = error.errors() or [{"loc": (), "msg": "invalid request", "type": ""}]
    first = max(errors, key=lambda e: (len(e.get("loc", ())), not str(e.get("type", "")).endswith("_type")))
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    param = validation_param(tuple(first.get("loc", ())))
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def install_error_handlers(
    app: FastAPI, converters: dict[type[Exception], Callable[[Exception], APIError]] | None = None
) -> None:
    """Map every error to OpenAI's shape: typed errors by their status, ``converters`` for other typed
    errors (e.g. the store's), validation errors as 400 ``InvalidRequest``, anything else as a logged 500."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(InvalidRequest(*invalid_request(exc)))

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else ""
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        body = error_body(str(exc.detail or phrase), type_, code=code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    def converted(convert: Callable[[Exception], APIError]) -> Callable[[Request, Exception], object]:
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return error_response(convert(exc))

        return handler

    app.add_exception_handler(APIError, on_api_error)
    for kind, convert in (converters or {}).items():
        app.add_exception_handler(kind, converted(convert))
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
