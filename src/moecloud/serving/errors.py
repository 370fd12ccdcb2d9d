"""Typed serving errors and the one place they become HTTP responses in OpenAI's error shape."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ServingError(Exception):
    """Base of every error the API reports; subclasses fix the status and the OpenAI error type."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ServingError):
    status, type = 400, "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, param: str, detail: str = "is not supported by this server") -> None:
        super().__init__(f"'{param}' {detail}", param=param)


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    @classmethod
    def for_request(cls, prompt_tokens: int, max_model_len: int, max_tokens: int | None = None
                    ) -> ContextLengthExceeded:
        if max_tokens is None:
            return cls(f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
                       f"{prompt_tokens} tokens (at least one must be left to generate).", param="prompt")
        return cls(f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
                   f"{prompt_tokens} tokens and max_tokens is {max_tokens} ({prompt_tokens + max_tokens} "
                   "in all).", param="max_tokens")


class ModelNotFound(ServingError):
    status, type, code = 404, "invalid_request_error", "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist", param="model")


class QueueFull(ServingError):
    status, type, code = 429, "rate_limit_error", "queue_full"

    def __init__(self, waiting: int) -> None:
        super().__init__(f"The server is busy: {waiting} requests are already waiting. Retry later.")


class ShuttingDown(ServingError):
    status, type, code = 503, "service_unavailable", "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new requests.")


class EngineDead(ServingError):
    status, type, code = 503, "service_unavailable", "engine_dead"


class ClientDisconnected(ServingError):
    """The client went away before the reply; nobody reads the response (499 as nginx logs it)."""

    status, type, code = 499, "client_closed_request", "client_disconnected"

    def __init__(self) -> None:
        super().__init__("the client closed the connection")


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: ServingError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.type, error.param, error.code),
                        status_code=error.status)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _validation_param(loc: tuple[object, ...]) -> str | None:
    """The field path of a validation error, without "body" and the union-member tags pydantic adds."""
    parts = []
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to OpenAI's shape: typed errors by their status, FastAPI's 422 to 400, the rest to 500."""

    async def on_serving_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServingError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _validation_param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, param = "The request body is not valid JSON.", None
        else:
            message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(InvalidRequest(message, param=param))

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else ""
        type_ = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        body = error_body(str(exc.detail or phrase), type_)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal_error"),
                            status_code=500)

    app.add_exception_handler(ServingError, on_serving_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
