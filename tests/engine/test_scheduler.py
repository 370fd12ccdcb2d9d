"""Scheduler and block manager on their own: ids and counts, no model, no tensors."""

from __future__ import annotations

from moecloud.engine.kv_cache import BlockManager
from moecloud.engine.scheduler import Scheduler
from moecloud.engine.sequence import Sequence


def _seq(name: str, tokens: list[int]) -> Sequence:
    return Sequence(name, list(tokens), len(tokens))


def _run(scheduler: Scheduler) -> dict[str, int]:
    plan = scheduler.schedule()
    scheduler.update(plan.scheduled)
    return plan.scheduled


def test_token_budget_chunks_prefill_and_keeps_decodes_first():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a, b = _seq("a", range(3)), _seq("b", range(100, 125))
    scheduler.add(a)
    scheduler.add(b)
    assert _run(scheduler) == {"a": 3, "b": 7}
    a.token_ids.append(9)  # a sampled a token: it now decodes one per step, ahead of b's prefill
    assert _run(scheduler) == {"a": 1, "b": 9}
    a.token_ids.append(9)
    assert _run(scheduler) == {"a": 1, "b": 9}
    assert b.num_computed_tokens == 25


def test_prefix_blocks_are_shared_and_refcounted():
    blocks = BlockManager(16, 4)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=64)
    first = _seq("first", range(10))
    scheduler.add(first)
    _run(scheduler)
    second = _seq("second", list(range(8)) + [77, 78, 79])
    scheduler.add(second)
    assert _run(scheduler) == {"second": 3}  # two full blocks (8 tokens) came from the cache
    assert second.block_table[:2] == first.block_table[:2]
    assert [blocks.ref_counts[b] for b in first.block_table[:2]] == [2, 2]
    scheduler.finish("first")
    scheduler.finish("second")
    assert blocks.num_free_blocks == 16
    third = _seq("third", range(9))
    scheduler.add(third)
    assert _run(scheduler) == {"third": 1}  # freed blocks still serve their prefix
    assert third.num_cached_tokens == 8


def test_full_prompt_hit_still_computes_a_token():
    scheduler = Scheduler(BlockManager(16, 4), max_num_seqs=8, max_num_batched_tokens=64)
    scheduler.add(_seq("x", range(8)))
    _run(scheduler)
    scheduler.finish("x")
    scheduler.add(_seq("y", range(8)))
    assert _run(scheduler) == {"y": 4}


def test_preemption_frees_the_newest_and_requeues_it_first():
    blocks = BlockManager(4, 4, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=64)
    old, new = _seq("old", range(7)), _seq("new", range(100, 107))
    scheduler.add(old)
    scheduler.add(new)
    assert _run(scheduler) == {"old": 7, "new": 7}
    old.token_ids += [1, 1]
    new.token_ids.append(1)
    plan = scheduler.schedule()  # old needs a third block; none free: new is preempted
    assert plan.preempted == ["new"] and plan.scheduled == {"old": 2}
    assert new.num_computed_tokens == 0 and not new.block_table
    assert scheduler.waiting[0] is new
