"""How the engine tells one request's failure from its own, and the fault injection tests use to prove it.

A failure while scheduling, running or sampling is charged to the request it came from, which ends with an
error while the others go on. Only a failure that leaves the engine unusable (device out of memory, a CUDA
error) or that no single request explains is fatal: ``LLMEngine.step`` raises ``EngineFailed`` and the
caller must stop using the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import torch

FORWARD, SAMPLE, FATAL = "forward", "sample", "fatal"
FAULT_STAGES = (FORWARD, SAMPLE, FATAL)


class EngineFailed(RuntimeError):
    """The engine cannot go on; every request in it is lost."""


class InjectedFault(RuntimeError):
    """Raised by a ``FaultInjector`` where an armed request would have hit a real bug."""


class InjectedFatalFault(EngineFailed):
    """Raised by a ``FaultInjector`` in place of a device failure."""


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the engine unusable, rather than one request broken."""
    if isinstance(exc, EngineFailed | MemoryError | torch.OutOfMemoryError | torch.AcceleratorError):
        return True
    # CUDA errors are sticky (every later kernel fails too); some builds raise them as plain RuntimeErrors
    message = str(exc) if isinstance(exc, RuntimeError) else ""
    return "CUDA error" in message or "CUBLAS_STATUS" in message


class FaultInjector:
    """Test-only: makes the engine fail chosen requests at a chosen stage, as a real bug would.

    ``arm(request_id, stage)`` marks a request: ``forward`` fails every model forward it is part of,
    ``sample`` fails its sampling, ``fatal`` fails the forward the way a lost device does. An id also arms the
    engine requests derived from it (``<id>-<i>`` per prompt, ``<id>#<i>`` per sequence). Armed ids stay
    armed: a test arms a handful, so nothing is ever pruned.
    """

    def __init__(self) -> None:
        self._armed: dict[str, str] = {}
        self._lock = threading.Lock()  # armed from the event loop, checked on the engine thread

    def arm(self, request_id: str, stage: str) -> None:
        if stage not in FAULT_STAGES:
            raise ValueError(f"the fault stage must be one of {', '.join(FAULT_STAGES)}, not {stage!r}")
        with self._lock:
            self._armed[request_id] = stage

    def check(self, stage: str, seq_ids: Iterable[str]) -> None:
        """Raise the armed fault of the first sequence armed for ``stage`` (``fatal`` counts as a forward)."""
        with self._lock:
            armed = dict(self._armed)
        for seq_id in seq_ids:
            fault = _armed_stage(armed, seq_id)
            if fault == FATAL and stage == FORWARD:
                raise InjectedFatalFault(f"injected fatal fault in the forward of {seq_id}")
            if fault == stage:
                raise InjectedFault(f"injected fault in the {stage} of {seq_id}")


def _armed_stage(armed: dict[str, str], seq_id: str) -> str | None:
    request_id = seq_id.split("#", 1)[0]
    while request_id:
        if request_id in armed:
            return armed[request_id]
        request_id = request_id.rpartition("-")[0]
    return None
