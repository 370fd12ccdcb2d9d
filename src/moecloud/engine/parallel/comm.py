"""The collectives one rank of a parallel engine makes: over its tensor-parallel group (same expert rank) and its
expert-parallel group (same tensor rank), on raw process groups of its own (never torch's global default group:
several engines may live in one process, as in the tests).

Every method here is a collective: every rank of the group must call it, in the same order, with tensors of the
same shape (all-to-all: matching splits). A group of one rank is no group at all: its collectives return at once.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from moecloud.engine.parallel.layout import ParallelLayout

GLOO_HOST = "127.0.0.1"  # the address gloo's pairs bind to by default: one machine (hostname lookups can fail)


def padded_part(total: int, parts: int, index: int) -> tuple[int, int]:
    """Part ``index`` of ``range(total)`` cut into ``parts`` contiguous pieces of ``ceil(total / parts)`` (the last
    ones shorter, possibly empty): pieces that gather into one padded tensor with no per-rank sizes exchanged."""
    per = -(-total // parts)
    return min(index * per, total), min((index + 1) * per, total)


class Comm:
    """One rank's groups and collectives. ``seconds`` / ``calls``: the wall time and number of its data collectives
    (on CUDA the time includes a device synchronisation before and after each only when ``timing`` is set, so the
    default costs no sync)."""

    def __init__(self, layout: ParallelLayout, rank: int, device: torch.device,
                 tp_group: dist.ProcessGroup | None, ep_group: dist.ProcessGroup | None) -> None:
        self.layout, self.rank, self.device = layout, rank, device
        self.ep_rank, self.tp_rank = layout.coords(rank)
        self.tp_group, self.ep_group = tp_group, ep_group
        self.seconds = 0.0
        self.calls = 0
        self.timing = False

    @classmethod
    def create(cls, layout: ParallelLayout, rank: int, store: dist.Store, device: torch.device,
               timeout: datetime.timedelta, gloo_host: str = GLOO_HOST) -> Comm:
        """This rank's TP group (prefix ``tp{ep_rank}``) and EP group (prefix ``ep{tp_rank}``) over ``store``:
        NCCL on a CUDA device, gloo (pairs bound to ``gloo_host``) elsewhere. Blocks until the group's other ranks
        join (at most ``timeout``)."""
        ep_rank, tp_rank = layout.coords(rank)
        tp = _group(store, f"tp{ep_rank}", tp_rank, layout.tp, device, timeout, gloo_host)
        ep = _group(store, f"ep{tp_rank}", ep_rank, layout.ep, device, timeout, gloo_host)
        return cls(layout, rank, device, tp, ep)

    def close(self) -> None:
        for group in (self.tp_group, self.ep_group):
            if group is not None and hasattr(group, "shutdown"):
                group.shutdown()
        self.tp_group = self.ep_group = None

    @contextmanager
    def _timed(self) -> Iterator[None]:
        sync = self.timing and self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def tp_all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the TP group, in place (``x`` contiguous)."""
        return self._all_reduce(self.tp_group, x)

    def ep_all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(self.ep_group, x)

    def _all_reduce(self, group: dist.ProcessGroup | None, x: torch.Tensor) -> torch.Tensor:
        if group is not None and x.numel():  # the same shape on every rank: all skip an empty one
            with self._timed():
                group.allreduce([x]).wait()
        return x

    def tp_all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every TP rank's ``x`` (same shape on all) concatenated along ``dim``, in tensor-rank order."""
        return self._all_gather(self.tp_group, x, dim)

    def ep_all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every EP rank's ``x`` (same shape on all) concatenated along ``dim``, in expert-rank order."""
        return self._all_gather(self.ep_group, x, dim)

    def _all_gather(self, group: dist.ProcessGroup | None, x: torch.Tensor, dim: int) -> torch.Tensor:
        if group is None:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(group.size())]
        with self._timed():
            group.allgather([parts], [x]).wait()
        return torch.cat(parts, dim=dim)

    def ep_all_to_all(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """Rows ``x`` [sum(send), ...]: the ``send[r]`` rows in turn go to EP rank ``r``; returns the
        ``sum(recv)`` rows received, ``recv[r]`` of them from rank ``r``, in rank order."""
        if self.ep_group is None:
            return x
        out = x.new_empty((sum(recv), *x.shape[1:]))
        with self._timed():
            self.ep_group.alltoall_base(out, x.contiguous(), recv, send, dist.AllToAllOptions()).wait()
        return out


def _group(store: dist.Store, prefix: str, rank: int, size: int, device: torch.device,
           timeout: datetime.timedelta, gloo_host: str) -> dist.ProcessGroup | None:
    if size == 1:
        return None
    prefixed = dist.PrefixStore(prefix, store)
    if device.type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, size, options)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=gloo_host)]
    return dist.ProcessGroupGloo(prefixed, rank, size, options)
