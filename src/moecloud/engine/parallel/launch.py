"""Starting one engine over T x E ranks: rank 0 (the `LLMEngine`'s process) holds the rendezvous store and
starts ranks 1..W-1 as child processes, which read the `EngineConfig` from the store, load their part of the
model, agree on the KV cache's size and follow rank 0's step plan (``control.py``) until told to stop.

Rank 0 watches its ranks: one that exits fails the engine (`RankGroup.check` raises `EngineFailed`, and the
callbacks of `RankGroup.on_failure` run at once, so an idle engine-core process ends too). A rank ends with
rank 0 (its parent watch) and when a collective fails or times out.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Protocol

import torch
import torch.distributed as dist

from moecloud.engine.engine_config import EngineConfig
from moecloud.engine.failures import EngineFailed
from moecloud.engine.loader import load_model
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.model_config import ModelConfig, load_model_config
from moecloud.engine.model_runner import ModelRunner, kv_cache_tokens_from_memory
from moecloud.engine.parallel.comm import Comm
from moecloud.engine.parallel.control import ControlGroup, follow
from moecloud.engine.parallel.layout import ParallelLayout
from moecloud.engine.processes import exit_with_parent, python_call_command

log = logging.getLogger(__name__)


def create_comm(layout: ParallelLayout, rank: int, store: dist.Store, device: torch.device,
                timeout: datetime.timedelta) -> Comm:
    """This rank's data groups (tensor- and expert-parallel), on their own prefix of the rendezvous store."""
    return Comm.create(layout, rank, dist.PrefixStore("comm", store), device, timeout)


def load_rank_model(config: EngineConfig, model_config: ModelConfig, dtype: torch.dtype, device: torch.device,
                    max_positions: int, comm: Comm | None) -> DeepseekForCausalLM:
    """This rank's model: its shard of the checkpoint (the whole model on one rank)."""
    return load_model(config.model, model_config, dtype, device, max_positions,
                      quantization=config.quantization, fp8_compute=config.fp8_compute, comm=comm)


def kv_cache_tokens(config: EngineConfig, model: DeepseekForCausalLM, device: torch.device, max_model_len: int,
                    control: ControlGroup | None) -> int:
    """The KV cache's capacity in tokens: the setting, else what memory allows; the least over every rank, so
    every rank builds the same blocks."""
    tokens = config.kv_cache_tokens
    if tokens is None:
        tokens = kv_cache_tokens_from_memory(model, device, config.block_size, config.max_num_batched_tokens,
                                             config.memory_utilization, max_model_len)
    return tokens if control is None else control.agree_min(tokens)


def new_runner(config: EngineConfig, model: DeepseekForCausalLM, num_blocks: int, device: torch.device,
               max_model_len: int) -> ModelRunner:
    return ModelRunner(
        model,
        num_blocks,
        config.block_size,
        device,
        compile_decode=config.compile,
        compile_max_batch=config.compile_max_batch,
        graph_max_batch=min(config.cuda_graph_max_batch, config.max_num_seqs) if config.cuda_graphs else 0,
        graph_max_context=config.cuda_graph_max_context,
        max_model_len=max_model_len,
        compile_cache_dir=config.compile_cache_dir,
    )


def layout_of(config: EngineConfig) -> ParallelLayout:
    return ParallelLayout(config.tensor_parallel_size, config.expert_parallel_size)


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    """On CUDA each rank drives the device of its own number; on CPU all share the host."""
    device = config.resolve_device()
    return torch.device("cuda", rank) if device.type == "cuda" and layout_of(config).world > 1 else device


def data_backend(config: EngineConfig, device: torch.device) -> str:
    backend = config.parallel_backend
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("parallel_backend nccl needs device cuda")
    return backend


def for_ranks(config: EngineConfig) -> EngineConfig:
    """``config`` as every rank of a world of several runs it: eager, no CUDA graphs (the collectives of the
    parallel layers are not captured nor compiled yet)."""
    if layout_of(config).world == 1 or not (config.compile or config.cuda_graphs):
        return config
    log.info("compile and CUDA graphs are off across %d ranks: the parallel layers' collectives run eagerly",
             layout_of(config).world)
    return config.model_copy(update={"compile": False, "cuda_graphs": False})


def _timeout(config: EngineConfig) -> datetime.timedelta:
    return datetime.timedelta(seconds=config.parallel_timeout_seconds)


class RankProcess(Protocol):
    """One of ranks 1..W-1 as rank 0 holds it: a ``subprocess.Popen``, or a Ray actor (``ray_ranks.py``)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


def master_addr(config: EngineConfig) -> str:
    """Where the other ranks reach rank 0's store: this node's address among Ray's nodes."""
    if config.parallel_launcher == "ray":
        from moecloud.engine.parallel.ray_ranks import node_address

        return node_address()
    return config.parallel_master_addr


def start_ranks(config: EngineConfig, port: int, device: torch.device) -> list[RankProcess]:
    """Ranks 1..W-1, each told where rank 0's store listens."""
    world, addr, timeout = layout_of(config).world, master_addr(config), config.parallel_timeout_seconds
    if config.parallel_launcher == "ray":
        from moecloud.engine.parallel.ray_ranks import start_ray_ranks

        return start_ray_ranks(world, device, addr, port, timeout)
    return [subprocess.Popen(python_call_command("moecloud.engine.parallel.launch", "follower_main", addr, port,
                                                 rank, os.getpid(), timeout))
            for rank in range(1, world)]


class RankGroup:
    """Rank 0's side of a world of several ranks: the store, the other ranks' processes, the control group and
    this rank's data groups. Built by `start`; ``close()`` stops everything it started."""

    def __init__(self, config: EngineConfig, device: torch.device) -> None:
        self.layout = layout_of(config)
        self.failure: EngineFailed | None = None
        self._callbacks: list[Callable[[EngineFailed], None]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stop_seconds = config.parallel_stop_seconds
        timeout = _timeout(config)
        log.info("starting ranks 1..%d of %d x %d (tensor x expert parallel, data collectives over %s)",
                 self.layout.world - 1, self.layout.tp, self.layout.ep, data_backend(config, device))
        self._store = dist.TCPStore(master_addr(config), config.parallel_port, self.layout.world,
                                    is_master=True, timeout=timeout, wait_for_workers=False)
        self._store.set("config", pickle.dumps(config))
        self._store.set("threads", str(max(1, torch.get_num_threads() // self.layout.world)))
        self.processes: list[RankProcess] = start_ranks(config, self._store.port, device)
        self._watch = threading.Thread(target=self._watch_ranks, args=(config.parallel_watch_seconds,),
                                       name="rank-watch", daemon=True)
        self._watch.start()
        self.control: ControlGroup | None = None
        self.comm: Comm | None = None
        try:
            self._await_ranks(config.parallel_timeout_seconds, config.parallel_watch_seconds)
            self.control = ControlGroup(self._store, 0, self.layout.world, timeout)
            self.comm = create_comm(self.layout, 0, self._store, device, timeout)
        except BaseException:
            self.close()
            raise

    def _await_ranks(self, timeout: float, interval: float) -> None:
        """Wait until every rank has joined the store; a rank that exits first fails the start at once (the
        control group's own rendezvous would wait out the whole timeout)."""
        keys = [f"joined/{rank}" for rank in range(1, self.layout.world)]
        deadline = time.monotonic() + timeout
        while not self._store.check(keys):
            self.check()
            if time.monotonic() > deadline:
                raise EngineFailed(f"the ranks did not start within {timeout:g} s")
            time.sleep(interval)

    @property
    def seconds(self) -> float:
        """Rank 0's time in collectives and in the control group."""
        return (self.comm.seconds if self.comm else 0.0) + (self.control.seconds if self.control else 0.0)

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def on_failure(self, callback: Callable[[EngineFailed], None]) -> None:
        """``callback(failure)`` once the engine fails (at once if it has); it runs on the watching thread."""
        with self._lock:
            self._callbacks.append(callback)
            failure = self.failure
        if failure is not None:
            callback(failure)

    def fail(self, cause: BaseException) -> EngineFailed:
        """The engine's failure, ``cause`` its first reason; the callbacks run once."""
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = cause if isinstance(cause, EngineFailed) else EngineFailed(
                    f"a parallel step failed: {cause!r}")
            failure, callbacks = self.failure, list(self._callbacks)
        assert failure is not None
        if first:
            log.error("the engine failed: %s", failure)
            for callback in callbacks:
                callback(failure)
        return failure

    def _watch_ranks(self, interval: float) -> None:
        while not self._closed.wait(interval):
            for rank, process in enumerate(self.processes, start=1):
                status = process.poll()
                if status is not None:
                    self.fail(EngineFailed(f"rank {rank} (pid {process.pid}) exited with status {status}"))
                    return

    def close(self) -> None:
        """Tell the ranks to stop, wait ``parallel_stop_seconds`` for them, kill what is left. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.control is not None:
            if self.failure is None and all(p.poll() is None for p in self.processes):
                try:
                    self.control.send(("stop",))
                except Exception as exc:  # noqa: BLE001 - stopping anyway: they are killed below
                    log.warning("telling the ranks to stop failed: %r", exc)
            else:
                self.control.abort()
        for process in self.processes:
            try:
                process.wait(self._stop_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.comm is not None:
            self.comm.close()
        self.control = None


def follower_main(master_addr: str, port: int, rank: int, parent: int, timeout_seconds: float) -> None:
    """A rank's process (started by rank 0): ends with rank 0, exits 1 on any failure."""
    exit_with_parent(parent)
    try:
        run_follower(master_addr, port, rank, timeout_seconds)
    except BaseException:  # noqa: BLE001 - rank 0 sees the exit and fails the engine
        log.exception("rank %d failed", rank)
        os._exit(1)
    os._exit(0)  # no interpreter teardown: torch's can be slow, and nothing is left to flush


def run_follower(master_addr: str, port: int, rank: int, timeout_seconds: float,
                 device: torch.device | None = None) -> None:
    """Join the store, build this rank's part of the engine, follow rank 0 until it says stop. ``device``: the
    rank's own (default: ``rank_device``; a Ray actor sees only its GPU, as cuda:0)."""
    store = dist.TCPStore(master_addr, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_seconds))
    config: EngineConfig = pickle.loads(store.get("config"))
    torch.set_num_threads(int(store.get("threads")))
    layout, timeout = layout_of(config), _timeout(config)
    device = device or rank_device(config, rank)
    store.set(f"joined/{rank}", "1")
    control = ControlGroup(store, rank, layout.world, timeout)
    comm = create_comm(layout, rank, store, device, timeout)
    model_config = load_model_config(config.model)
    max_model_len = config.context_cap(model_config.max_position_embeddings)
    model = load_rank_model(config, model_config, config.resolve_dtype(device), device, max_model_len, comm)
    num_blocks = max(kv_cache_tokens(config, model, device, max_model_len, control) // config.block_size, 1)
    runner = new_runner(config, model, num_blocks, device, max_model_len)
    with torch.inference_mode():
        follow(control, runner, joins_logits=rank in layout.tp_ranks(0))
    comm.close()
