"""Turns a scheduled batch into tensors, runs the model and hands back the hidden rows that need logits; sizes the
latent KV cache from memory; replays decode steps from CUDA graphs on CUDA."""

from __future__ import annotations

import bisect
import logging
import os
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from moecloud.engine.model.attention import AttentionGroup, ForwardBatch, attention_mask
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.sequence import Sequence

log = logging.getLogger(__name__)

CPU_KV_CACHE_TOKENS = 65536  # the most a memory-sized cache holds on CPU (the host is shared with everything else)
GRAPH_MIN_CONTEXT = 256  # the narrowest block table a CUDA graph attends over, in tokens
DecodeFn = Callable[[torch.Tensor, ForwardBatch, list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens


class StepSeq(NamedTuple):
    """What a forward needs of one scheduled sequence; the step plan other ranks follow is a list of these."""

    token_ids: list[int]  # this step's tokens, at positions start .. start + len - 1
    start: int
    block_table: list[int]


def step_seqs(batch: list[ScheduledSeq]) -> list[StepSeq]:
    steps = []
    for item in batch:
        seq, start = item.seq, item.seq.num_computed_tokens
        steps.append(StepSeq(seq.token_ids[start:start + item.num_tokens], start, seq.block_table))
    return steps


@dataclass
class RunOutput:
    hidden: torch.Tensor  # [T, hidden]
    starts: list[int]  # per scheduled sequence, the row of its first new token
    logits: torch.Tensor | None = None  # [T, vocab] fp32: computed inside the compiled decode graph

    def logits_at(self, model: DeepseekForCausalLM, rows: list[int] | None = None) -> torch.Tensor:
        """The logits of ``rows`` (all rows: None), from the graph's own or through ``lm_head``."""
        if self.logits is not None:
            return self.logits if rows is None else self.logits[rows]
        return model.compute_logits(self.hidden if rows is None else self.hidden[rows])


def cache_slot(seq: Sequence | StepSeq, position: int, block_size: int) -> int:
    """The flat KV-cache slot the latent of ``seq``'s token at ``position`` is written to."""
    return seq.block_table[position // block_size] * block_size + position % block_size


def padded_tables(seqs: list[Sequence] | list[StepSeq], width: int, pad: int) -> list[list[int]]:
    """Each sequence's block table cut or padded (with block ``pad``) to ``width`` columns."""
    return [s.block_table[:width] + [pad] * (width - min(width, len(s.block_table))) for s in seqs]


def graph_batch_sizes(max_batch: int) -> list[int]:
    """The decode batch sizes captured: 1, 2, 4, ... below ``max_batch``, and ``max_batch`` itself."""
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return [*sizes, max_batch]


def graph_widths(block_size: int, max_blocks: int) -> list[int]:
    """The block-table widths (in blocks) captured: powers of two from ``GRAPH_MIN_CONTEXT`` tokens, the last one
    ``max_blocks`` (a width past it is never needed)."""
    width = min(max(1, -(-GRAPH_MIN_CONTEXT // block_size)), max_blocks)
    widths = []
    while width < max_blocks:
        widths.append(width)
        width *= 2
    return [*widths, max_blocks]


def bucket(sizes: list[int], n: int) -> int | None:
    """The smallest of the sorted ``sizes`` that holds ``n``; None if none does."""
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


def kv_bytes_per_token(model: DeepseekForCausalLM) -> int:
    """What one token's latent costs across all layers: ``num_layers * latent_dim * dtype size``."""
    c = model.config
    return c.num_hidden_layers * c.latent_dim * model.model.embed_tokens.weight.element_size()


def host_available_bytes() -> int:
    """The host's available memory (``MemAvailable`` of /proc/meminfo, else the free pages)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def kv_cache_tokens_from_memory(
    model: DeepseekForCausalLM, device: torch.device, block_size: int, max_num_batched_tokens: int,
    memory_utilization: float, max_model_len: int,
) -> int:
    """The latent cache's capacity in tokens (whole blocks) once the weights are in place.

    CUDA: ``total * memory_utilization`` less what is in use now (weights, other processes) less the activation
    peak of a full step, measured by running one (``max_num_batched_tokens`` prompt tokens in sequences of at
    most ``max_model_len``, logits of every row). CPU:
    the available host memory times ``memory_utilization``, capped at ``CPU_KV_CACHE_TOKENS`` (the host's
    memory is shared with every other process and "free" moves with the page cache).
    """
    per_token = kv_bytes_per_token(model)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        peak = _activation_peak(model, device, block_size, max_num_batched_tokens, max_model_len)
        budget = free - total * (1 - memory_utilization) - peak
        tokens = int(budget // per_token)
    else:
        tokens = min(CPU_KV_CACHE_TOKENS, int(host_available_bytes() * memory_utilization // per_token))
    tokens = tokens // block_size * block_size
    if tokens < block_size:
        raise ValueError(
            f"no memory left for the KV cache after the weights ({per_token} bytes a token): lower "
            "max_num_batched_tokens, raise memory_utilization or set kv_cache_tokens"
        )
    return tokens


def _activation_peak(
    model: DeepseekForCausalLM, device: torch.device, block_size: int, tokens: int, max_model_len: int
) -> int:
    """Bytes a step of ``tokens`` prompt tokens (sequences of at most ``max_model_len``) allocates beyond what is
    allocated already (its peak, on CUDA)."""
    lengths = [min(max_model_len, tokens - start) for start in range(0, tokens, max_model_len)]
    blocks = [-(-n // block_size) for n in lengths]
    seqs = []
    for i, n in enumerate(lengths):
        seq = Sequence(f"profile-{i}", [0] * n, n, use_prefix_cache=False)
        seq.block_table = list(range(sum(blocks[:i]), sum(blocks[: i + 1])))
        seqs.append(seq)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    runner = ModelRunner(model, sum(blocks), block_size, device)
    runner.run([ScheduledSeq(seq, seq.num_tokens) for seq in seqs]).logits_at(model)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del runner
    for moe in model.moe_layers().values():  # the profile is no traffic
        moe.expert_load.zero_()
    torch.cuda.empty_cache()
    return peak


def _own_code(method: types.MethodType) -> types.MethodType:
    """``method`` bound to a copy of its code object. dynamo keeps compiled graphs per code object, at most
    ``recompile_limit`` (8) of them: without a copy every engine of a process adds its two graphs to one list and
    the fifth engine's step fails (``fullgraph=True``)."""
    fn = method.__func__
    code = fn.__code__.replace()
    own = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(own, method.__self__)


class ModelRunner:
    def __init__(
        self,
        model: DeepseekForCausalLM,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        compile_decode: bool = False,
        compile_max_batch: int = 32,
        graph_max_batch: int = 0,
        graph_max_context: int = 0,
        max_model_len: int = 0,
        compile_cache_dir: str | Path | None = None,
    ) -> None:
        """``graph_max_batch`` > 0 on a CUDA device: decode steps of up to that many sequences whose contexts fit
        ``min(graph_max_context, max_model_len)`` tokens replay CUDA graphs (:class:`DecodeGraphs`)."""
        self.model, self.block_size, self.device = model, block_size, device
        self.compile_max_batch = compile_max_batch
        # Steps of decodes only (the steady state) run one graph compiled by inductor: one guard check and a few
        # fused kernels per step instead of ~1,500 eager ops. Prefill chunks and mixed steps stay eager.
        # size_asserts off: dynamo's guards already check the inputs; the asserts cost ~0.8 ms a step in Python.
        # The graph ends with lm_head: at batch 1 its product-and-sum runs on every thread (eager BLAS GEMV: one).
        if compile_decode and compile_cache_dir is not None:
            # inductor's FX-graph and AOT caches (graphs, generated C++, built kernels) live here; torch reads the
            # directory from this variable each time it looks one up (it has no config option for it)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(compile_cache_dir).resolve())
        self._decode = (
            torch.compile(_own_code(model.decode_step), dynamic=True, fullgraph=True, options={"size_asserts": False})
            if compile_decode
            else None
        )
        use_graphs = device.type == "cuda" and graph_max_batch > 0
        self._traced: set[bool] = set()  # the decode graphs dynamo has traced: one sequence (False), several (True)
        c = model.config
        dtype = model.model.embed_tokens.weight.dtype
        # [num_blocks, block_size, kv_lora_rank + qk_rope_head_dim] per layer: the latent, never full K/V. With
        # CUDA graphs one more block, never handed out, takes the writes of the graphs' padding rows.
        self.caches = [
            torch.zeros(num_blocks + use_graphs, block_size, c.latent_dim, dtype=dtype, device=device)
            for _ in range(c.num_hidden_layers)
        ]
        self.graphs: DecodeGraphs | None = None
        if use_graphs:
            max_blocks = -(-min(graph_max_context, max_model_len or graph_max_context) // block_size)
            # a compiled decode step is captured too, at the batch sizes it is used for eagerly
            eager = model.decode_step

            def compiled(input_ids: torch.Tensor, fb: ForwardBatch, caches: list[torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
                return self._traced_decode(input_ids.shape[0] > 1, input_ids, fb)

            def decode(size: int) -> DecodeFn:
                return compiled if self._decode is not None and size <= compile_max_batch else eager

            self.graphs = DecodeGraphs(
                decode, self.caches, block_size, num_blocks,
                graph_batch_sizes(graph_max_batch), graph_widths(block_size, max_blocks), device,
            )

    def capture_graphs(self) -> None:
        """Capture the decode graphs now (the engine's warm-up); else the first decode step that fits does."""
        if self.graphs is not None:
            self.graphs.capture()

    def run(self, batch: list[ScheduledSeq]) -> RunOutput:
        if self.graphs is not None and all(item.num_tokens == 1 for item in batch):
            out = self.graphs.run([item.seq for item in batch])
            if out is not None:
                return out
        return self.execute(step_seqs(batch))

    def execute(self, batch: list[StepSeq]) -> RunOutput:
        """The forward of one step's sequences (eager or compiled; never a CUDA graph)."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts: list[int] = []
        decodes: list[int] = []
        groups: list[AttentionGroup] = []
        for i, item in enumerate(batch):
            start, num_tokens = item.start, len(item.token_ids)
            end = start + num_tokens
            starts.append(len(ids))
            ids += item.token_ids
            positions += range(start, end)
            slots += [cache_slot(item, p, self.block_size) for p in range(start, end)]
            if num_tokens == 1:
                decodes.append(i)
            else:
                groups.append(self._group([starts[i]], num_tokens, [item], [end]))
        compiled = self._decode is not None and len(decodes) == len(batch) <= self.compile_max_batch
        if decodes:
            groups.append(
                self._group(
                    [starts[i] for i in decodes],
                    1,
                    [batch[i] for i in decodes],
                    [batch[i].start + 1 for i in decodes],
                    # at least 2 columns, so the compiled graph never specialises on a one-block table
                    min_width=2 if compiled else 1,
                )
            )
        if len(groups) == 1:
            groups[0].in_order = groups[0].token_index.numel() == len(ids)
        fb = ForwardBatch(
            positions=torch.tensor(positions, dtype=torch.long, device=self.device),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            groups=groups,
        )
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        if compiled:
            assert self._decode is not None
            with torch.inference_mode():
                hidden, logits = self._traced_decode(len(batch) > 1, input_ids, fb)
            return RunOutput(hidden, starts, logits)
        return RunOutput(self.model(input_ids, fb, self.caches), starts)

    def _traced_decode(self, several: bool, input_ids: torch.Tensor, fb: ForwardBatch
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled step. A graph's first call (where dynamo traces it) runs with float attributes (norm eps,
        ``nn.Embedding.norm_type``) as constants: with ``dynamic=True`` dynamo otherwise makes them symbolic, then
        specialises them inside inductor and restarts the whole trace, once per graph (half of a warm start)."""
        assert self._decode is not None
        if several in self._traced:
            return self._decode(input_ids, fb, self.caches)
        with torch._dynamo.config.patch(specialize_float=True):
            out = self._decode(input_ids, fb, self.caches)
        self._traced.add(several)
        return out

    def _group(
        self, starts: list[int], q_len: int, seqs: list[StepSeq], context_lens: list[int], min_width: int = 1
    ) -> AttentionGroup:
        width = max(min_width, *(-(-n // self.block_size) for n in context_lens))
        token_index = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(q_len)[None, :]
        lens = torch.tensor(context_lens, dtype=torch.long)
        return AttentionGroup(
            token_index=token_index.to(self.device),
            block_tables=torch.tensor(padded_tables(seqs, width, 0), dtype=torch.long, device=self.device),
            masked=attention_mask(lens, q_len, width * self.block_size).to(self.device),
        )


class DecodeGraphs:
    """Decode-only steps replayed from CUDA graphs, one per (batch size, block-table width) bucket.

    Every graph reads the same static buffers: token ids, positions, cache slots, block tables and context
    lengths (the mask is built inside the graph from the lengths: :func:`attention_mask`). A step is padded to
    the next captured batch size and width; a padding row decodes token 0 at position 0 into the scratch block
    (the caches' last, never handed out) with a context of one, so it never touches a real cache entry, and it
    is not counted in the expert load. The graphs share one memory pool, captured largest first.
    """

    def __init__(
        self, decode: Callable[[int], DecodeFn], caches: list[torch.Tensor], block_size: int, scratch_block: int,
        batch_sizes: list[int], widths: list[int], device: torch.device,
    ) -> None:
        self.decode, self.caches, self.block_size = decode, caches, block_size
        self.scratch_block, self.batch_sizes, self.widths, self.device = scratch_block, batch_sizes, widths, device
        rows, cols = batch_sizes[-1], widths[-1]
        self.input_ids = torch.zeros(rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.slots = torch.zeros(rows, dtype=torch.long, device=device)
        self.tables = torch.zeros(rows, cols, dtype=torch.long, device=device)
        self.context_lens = torch.ones(rows, dtype=torch.long, device=device)
        self.counted = torch.zeros(rows, dtype=torch.long, device=device)
        self.token_index = torch.arange(rows, device=device)[:, None]
        self.captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool: tuple[int, int] | None = None  # the graphs' shared memory pool, once the first is captured
        self._load(self.inputs([], rows, cols), rows, cols)  # padding until a step loads its rows

    def fits(self, seqs: list[Sequence]) -> tuple[int, int] | None:
        """The (batch size, width) bucket that holds this decode step; None if none does."""
        size = bucket(self.batch_sizes, len(seqs))
        width = bucket(self.widths, max(-(-(s.num_computed_tokens + 1) // self.block_size) for s in seqs))
        return None if size is None or width is None else (size, width)

    def inputs(self, seqs: list[Sequence], size: int, width: int) -> dict[str, torch.Tensor]:
        """The step's host-side buffer contents, padded to ``size`` rows and ``width`` columns."""
        pad = size - len(seqs)
        positions = [s.num_computed_tokens for s in seqs]
        return {
            "input_ids": torch.tensor([s.token_ids[p] for s, p in zip(seqs, positions, strict=True)] + [0] * pad),
            "positions": torch.tensor(positions + [0] * pad),
            "slots": torch.tensor(
                [cache_slot(s, p, self.block_size) for s, p in zip(seqs, positions, strict=True)]
                + [self.scratch_block * self.block_size] * pad
            ),
            "tables": torch.tensor(padded_tables(seqs, width, pad=self.scratch_block)
                                   + [[self.scratch_block] * width] * pad),
            "context_lens": torch.tensor([p + 1 for p in positions] + [1] * pad),
            "counted": torch.tensor([1] * len(seqs) + [0] * pad),
        }

    def forward_batch(self, size: int, width: int) -> ForwardBatch:
        """The batch the graph of this bucket runs: views of the static buffers, the mask computed from them."""
        return ForwardBatch(
            positions=self.positions[:size],
            slot_mapping=self.slots[:size],
            groups=[AttentionGroup(
                token_index=self.token_index[:size],
                block_tables=self.tables[:size, :width],
                masked=attention_mask(self.context_lens[:size], 1, width * self.block_size),
                in_order=True,
            )],
            counted=self.counted[:size],
        )

    def step(self, size: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The bucket's decode step over the static buffers: what its graph records (run eagerly, the same)."""
        return self.decode(size)(self.input_ids[:size], self.forward_batch(size, width), self.caches)

    def _load(self, values: dict[str, torch.Tensor], size: int, width: int) -> None:
        for name, value in values.items():
            target = getattr(self, name)
            (target[:size, :width] if name == "tables" else target[:size]).copy_(value)

    def capture(self) -> None:
        """Record every bucket's graph, largest first (each one's buffers loaded with padding rows only)."""
        if self.captured:
            return
        with torch.inference_mode():
            for size in reversed(self.batch_sizes):
                for width in reversed(self.widths):
                    self._load(self.inputs([], size, width), size, width)
                    self.captured[(size, width)] = self._record(size, width)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info("captured %d decode CUDA graphs (batch sizes %s, widths %s blocks)", len(self.captured),
                 self.batch_sizes, self.widths)

    def _record(self, size: int, width: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """One bucket's graph and its outputs: a warm-up run off the capture stream (as torch asks), then the
        capture, into the pool the graphs share."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.step(size, width)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            hidden, logits = self.step(size, width)
        self._pool = graph.pool()
        return graph, hidden, logits

    def run(self, seqs: list[Sequence]) -> RunOutput | None:
        """The decode step of ``seqs`` (row i: ``seqs[i]``) replayed; None if no bucket holds it."""
        shape = self.fits(seqs)
        if shape is None:
            return None
        self.capture()
        size, width = shape
        self._load(self.inputs(seqs, size, width), size, width)
        graph, hidden, logits = self.captured[shape]
        graph.replay()
        n = len(seqs)  # copies: the next replay (of any graph: one pool) overwrites the outputs
        return RunOutput(hidden[:n].clone(), list(range(n)), logits[:n].clone())
