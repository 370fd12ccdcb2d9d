"""Continuous batching: which sequences run this step and how many tokens each computes.

Each step hands out a token budget: running sequences first (one token each when decoding, the next chunk
when still prefilling), then waiting ones in arrival order. A prefix-cache hit simply starts a sequence
with tokens already computed, and a long prompt takes several steps (chunked prefill): both are the same
mechanism. When blocks run out, the newest running sequence is preempted: its blocks are freed and it is
recomputed later from its tokens, so nothing is lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from moecloud.engine.kv_cache import BlockManager
from moecloud.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    scheduled: dict[str, int] = field(default_factory=dict)  # seq_id -> tokens to compute, in batch order
    preempted: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = block_manager
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.seqs: dict[str, Sequence] = {}
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.seqs[seq.seq_id] = seq
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            n = min(seq.num_uncomputed_tokens, budget)
            if n == 0:
                index += 1
                continue
            while not self.blocks.ensure_capacity(seq, seq.num_computed_tokens + n):
                victim = self.running.pop()
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.scheduled[seq.seq_id] = n
                budget -= n
                index += 1
        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                seq.num_computed_tokens = self.blocks.match_prefix(seq)
                if not seq.num_output_tokens:  # usage counts prompt hits, not recomputation after preemption
                    seq.num_cached_tokens = seq.num_computed_tokens
            n = min(seq.num_uncomputed_tokens, budget)
            if not self.blocks.ensure_capacity(seq, seq.num_computed_tokens + n):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled[seq.seq_id] = n
            budget -= n
        return out

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.blocks.release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq.seq_id)
        self.num_preemptions += 1

    def update(self, scheduled: dict[str, int]) -> None:
        """Record the tokens the runner computed."""
        for seq_id, n in scheduled.items():
            seq = self.seqs[seq_id]
            seq.num_computed_tokens += n
            self.blocks.commit(seq)

    def finish(self, seq_id: str) -> None:
        seq = self.seqs.pop(seq_id, None)
        if seq is None:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        self.blocks.release(seq)
