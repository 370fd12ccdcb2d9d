"""Final usage per request, for the gateway's bill: every request the gateway sends carries its
``x-request-id``, and the gateway asks for the final usage of one it cut short (its client hung up, or the
stream ended without a usage chunk). Asking aborts the request if it still runs: the gateway has given up on it.
"""

from __future__ import annotations

from collections import OrderedDict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from moecloud.serving.generation import Generation
from moecloud.web.errors import error_body

router = APIRouter()


class UsageReports:
    """The latest ``capacity`` requests by caller's request id: running ones as their generation, finished ones
    as their final usage (the oldest are forgotten)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Generation | dict[str, object]] = OrderedDict()

    def track(self, request_id: str | None, generation: Generation) -> None:
        if not request_id:
            return
        self._entries[request_id] = generation
        self._entries.move_to_end(request_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

        def keep(usage: dict[str, object]) -> None:
            if self._entries.get(request_id) is generation:
                self._entries[request_id] = usage

        generation.on_final = keep

    async def finish(self, request_id: str) -> dict[str, object] | None:
        """The request's final usage, aborting it first if it still runs; None for an unknown id."""
        entry = self._entries.get(request_id)
        if not isinstance(entry, Generation):
            return entry
        entry.abort()
        return await entry.final_usage()


@router.post("/v1/requests/{request_id}/abort")
async def abort_and_report(request_id: str, request: Request) -> JSONResponse:
    reports: UsageReports = request.app.state.serving.reports  # not the State dependency: state.py imports us
    usage = await reports.finish(request_id)
    if usage is None:
        return JSONResponse(error_body(f"no request {request_id!r} is known here", "invalid_request_error",
                                       "request_id", "not_found"), status_code=404)
    return JSONResponse({"request_id": request_id, "usage": usage})
