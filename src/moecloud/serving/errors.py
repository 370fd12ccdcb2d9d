"""Typed serving errors; moecloud.web.errors turns them into OpenAI-shaped responses."""

from __future__ import annotations

from fastapi import FastAPI

from moecloud.web.errors import APIError
from moecloud.web.errors import install_error_handlers as install_error_handlers_for


class ServingError(APIError):
    """Base of every error the worker reports; subclasses fix the status and the OpenAI error type."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)


class InvalidRequest(ServingError):
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


class RequestFailed(ServingError):
    """The engine failed this one request (a bug it met, not bad input it could name); the others go on."""

    status, type, code = 500, "server_error", "request_failed"

    def __init__(self, cause: str) -> None:
        super().__init__(f"The engine could not complete this request ({cause}); other requests are unaffected.")


class ClientDisconnected(ServingError):
    """The client went away before the reply; nobody reads the response (499 as nginx logs it)."""

    status, type, code = 499, "client_closed_request", "client_disconnected"

    def __init__(self) -> None:
        super().__init__("the client closed the connection")


def install_error_handlers(app: FastAPI) -> None:
    install_error_handlers_for(app, lambda message, param: InvalidRequest(message, param=param))
