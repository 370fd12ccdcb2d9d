"""The worker's own typed errors (those both edges raise are in ``moecloud.web.errors``, which turns every one
into an OpenAI-shaped response)."""

from __future__ import annotations

from moecloud.web.errors import APIError


class QueueFull(APIError):
    status, type, code = 429, "rate_limit_error", "queue_full"

    def __init__(self, waiting: int) -> None:
        super().__init__(f"The server is busy: {waiting} requests are already waiting. Retry later.")


class ShuttingDown(APIError):
    status, type, code = 503, "service_unavailable", "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new requests.")


class EngineDead(APIError):
    status, type, code = 503, "service_unavailable", "engine_dead"


class RequestFailed(APIError):
    """The engine failed this one request (a bug it met, not bad input it could name); the others go on."""

    status, type, code = 500, "server_error", "request_failed"

    def __init__(self, cause: str) -> None:
        super().__init__(f"The engine could not complete this request ({cause}); other requests are unaffected.")
