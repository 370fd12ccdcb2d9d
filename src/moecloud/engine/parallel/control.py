"""The step plan: rank 0 schedules, and every other rank runs the same forward because rank 0 tells it to.

Commands travel over a control group of their own (gloo over the whole world, on a prefix of the rendezvous
store, never the process-global default group: several engines may share a process), pickled, in one broadcast
of a fixed frame (and one more for the rest of a long message):

* ``("step", step_id, release_below, steps, logit_rows)``: run ``steps`` (a list of `StepSeq`), then the ranks of
  rank 0's tensor-parallel group compute the logits of ``logit_rows`` (each finished sequence's last row: what
  sampling needs) and keep the step's hidden states until a step says ``release_below`` is past ``step_id``;
* ``("logits", step_id, rows)``: the logits of other rows of a kept step (prompt logprobs; None: every row);
* ``("stop",)``.

Every model forward is a collective: an exception inside one leaves the ranks out of step, so it fails the
engine (`EngineFailed`) instead of one request.
"""

from __future__ import annotations

import datetime
import logging
import pickle
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from moecloud.engine.failures import EngineFailed
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model_runner import ModelRunner, RunOutput, ScheduledSeq, step_seqs

log = logging.getLogger(__name__)

STEP, LOGITS, STOP = "step", "logits", "stop"
# a follower waits for rank 0's next command as long as rank 0 is idle: without limit (its parent watch and the
# closed connection of a dead rank 0 end the wait instead)
IDLE_WAIT = datetime.timedelta(days=365 * 100)
# a message is one broadcast of this many bytes (its size, then its start), and one more for a longer one's rest:
# measured on 2 CPU cores (loopback), a small message: 190 us a send with this frame, 270 with 4 KiB, 375 with two
# broadcasts (size, then bytes); a decode plan of 8 sequences with short contexts takes ~100-700 bytes
FRAME_BYTES = 2048


class ControlGroup:
    """Rank 0 sends, the other ranks receive; ``seconds`` is this rank's time spent in it."""

    def __init__(self, store: dist.Store, rank: int, world: int, timeout: datetime.timedelta) -> None:
        self.rank, self.world, self.timeout = rank, world, timeout
        self._group = dist.ProcessGroupGloo(dist.PrefixStore("control", store), rank, world, timeout)
        self._lock = threading.Lock()  # close() may come from another thread than the step loop
        self.seconds = 0.0

    def send(self, message: tuple[object, ...]) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        frame = torch.zeros(FRAME_BYTES, dtype=torch.uint8)
        frame[:8] = torch.tensor([len(payload)], dtype=torch.long).view(torch.uint8)
        head = payload[:FRAME_BYTES - 8]
        frame[8:8 + len(head)] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
        began = time.perf_counter()
        with self._lock:
            self._broadcast(frame, self.timeout)
            if len(payload) > len(head):
                self._broadcast(torch.frombuffer(bytearray(payload[len(head):]), dtype=torch.uint8), self.timeout)
        self.seconds += time.perf_counter() - began

    def receive(self) -> tuple[object, ...]:
        frame = torch.empty(FRAME_BYTES, dtype=torch.uint8)
        self._broadcast(frame, IDLE_WAIT)
        began = time.perf_counter()
        size = int(frame[:8].view(torch.long).item())
        payload = frame[8:8 + size].numpy().tobytes()
        if size > FRAME_BYTES - 8:
            rest = torch.empty(size - (FRAME_BYTES - 8), dtype=torch.uint8)
            self._broadcast(rest, self.timeout)
            payload += rest.numpy().tobytes()
        self.seconds += time.perf_counter() - began
        return pickle.loads(payload)

    def agree_min(self, value: int) -> int:
        """The least of every rank's ``value`` (each rank calls it at the same point)."""
        tensor = torch.tensor([value], dtype=torch.long)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MIN
        self._group.allreduce([tensor], options).wait(self.timeout)
        return int(tensor.item())

    def abort(self) -> None:
        """Drop the group's connections without a word to the others (a rank is gone or out of step)."""
        self._group.abort()

    def _broadcast(self, tensor: torch.Tensor, timeout: datetime.timedelta) -> None:
        options = dist.BroadcastOptions()
        options.rootRank, options.timeout = 0, timeout
        self._group.broadcast([tensor], options).wait(timeout)


@dataclass(eq=False)
class ParallelRunOutput(RunOutput):
    """A step's output on rank 0: the logits of ``known_rows`` came with the step; other rows ask the ranks."""

    runner: ParallelRunner | None = None
    step_id: int = 0
    known_rows: dict[int, int] = field(default_factory=dict)  # row -> its index in known
    known: torch.Tensor | None = None  # [len(known_rows), vocab]

    def logits_at(self, model: DeepseekForCausalLM, rows: list[int] | None = None) -> torch.Tensor:
        if self.known is not None and rows is not None and all(row in self.known_rows for row in rows):
            return self.known[[self.known_rows[row] for row in rows]]
        assert self.runner is not None
        return self.runner.logits(self, rows)


class ParallelRunner:
    """Rank 0's `ModelRunner` for a world of several ranks: each step is broadcast, then run here as everywhere.

    ``fail(exc)`` turns an exception inside a collective into the engine's failure (and returns it to raise);
    ``check()`` raises the failure of a rank that died.
    """

    def __init__(self, runner: ModelRunner, control: ControlGroup, check: Callable[[], None],
                 fail: Callable[[BaseException], EngineFailed]) -> None:
        self.runner, self.control = runner, control
        self._check, self._fail = check, fail
        self._step_ids = iter(range(1, 1 << 62))
        # outputs rank 0 still holds: followers keep their hidden states for the logits they may be asked for
        self._live: weakref.WeakValueDictionary[int, ParallelRunOutput] = weakref.WeakValueDictionary()

    @property
    def caches(self) -> list[torch.Tensor]:
        return self.runner.caches

    def capture_graphs(self) -> None:
        """Nothing to capture: CUDA graphs are off across ranks."""

    def run(self, batch: list[ScheduledSeq]) -> RunOutput:
        self._check()
        steps = step_seqs(batch)
        step_id = next(self._step_ids)
        release_below = min(self._live, default=step_id)
        rows, row = [], 0
        for item in batch:
            row += item.num_tokens
            if item.seq.num_computed_tokens + item.num_tokens == item.seq.num_tokens:
                rows.append(row - 1)
        try:
            self.control.send((STEP, step_id, release_below, steps, rows))
            out = self.runner.execute(steps)
            known = self.runner.model.compute_logits(out.hidden[rows]) if rows else None
        except Exception as exc:
            raise self._fail(exc) from exc
        result = ParallelRunOutput(out.hidden, out.starts, runner=self, step_id=step_id,
                                   known_rows={r: i for i, r in enumerate(rows)}, known=known)
        self._live[step_id] = result
        return result

    def logits(self, out: ParallelRunOutput, rows: list[int] | None) -> torch.Tensor:
        """The logits of ``rows`` of a step: a second round trip (the tensor-parallel group joins it)."""
        self._check()
        try:
            self.control.send((LOGITS, out.step_id, rows))
            return self.runner.model.compute_logits(out.hidden if rows is None else out.hidden[rows])
        except Exception as exc:
            raise self._fail(exc) from exc


def follow(control: ControlGroup, runner: ModelRunner, joins_logits: bool) -> None:
    """A follower's loop: run what rank 0 sends until it says stop (an exception ends the rank, and the engine)."""
    model = runner.model
    kept: dict[int, torch.Tensor] = {}
    while True:
        message = control.receive()
        if message[0] == STEP:
            _, step_id, release_below, steps, rows = message
            for old in [k for k in kept if k < release_below]:  # type: ignore[operator]
                del kept[old]
            hidden = runner.execute(steps).hidden  # type: ignore[arg-type]
            if joins_logits:
                kept[step_id] = hidden  # type: ignore[index]
                if rows:
                    model.compute_logits(hidden[rows])
        elif message[0] == LOGITS:
            _, step_id, rows = message
            if joins_logits:
                hidden = kept[step_id]  # type: ignore[index]
                model.compute_logits(hidden if rows is None else hidden[rows])
        elif message[0] == STOP:
            return
        else:
            raise ValueError(f"unknown control command {message[0]!r}")

