"""Running a request's work only as long as its client is there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from moecloud.web.errors import ClientDisconnected

T = TypeVar("T")


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first: then it is cancelled, and waited for (so what it holds,
    an engine request or an upstream call and its lease, is given back before the caller goes on), and
    `ClientDisconnected` is raised."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work_task
    if work_task.cancelled():
        raise ClientDisconnected()
    return work_task.result()
