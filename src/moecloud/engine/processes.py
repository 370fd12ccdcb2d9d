"""Child processes of the engine and of the worker: how one is started, and how it ends with its parent."""

from __future__ import annotations

import os
import sys
import threading
import time


def python_call_command(module: str, function: str, *args: int | str) -> list[str]:
    """The command line of a process that calls ``module.function(*args)`` (``subprocess``, not
    ``multiprocessing``: nothing of the parent's ``__main__`` is imported again), with the parent's import path."""
    code = (f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; "
            f"from {module} import {function}; {function}(*{args!r})")
    return [sys.executable, "-c", code]


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """A daemon thread: end this process once its parent ``parent`` is gone (reparented), even mid-step."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
