"""The prefix cache at full context length (128k tokens, V2/V3's max_position_embeddings): no model, ids only."""

from __future__ import annotations

import pytest

from moecloud.engine.kv_cache import BLOCK_HASH_BYTES, BlockManager
from moecloud.engine.scheduler import Scheduler
from moecloud.engine.sequence import Sequence

CONTEXT = 131072  # DeepSeek-V2/V3's max_position_embeddings
BLOCK = 16
CHUNK = 2048  # the engine's default max_num_batched_tokens


def _tokens(n: int, salt: int = 0) -> list[int]:
    # a vocabulary-sized cycle with a stride, so blocks far apart still hold different ids
    return [(i * 7919 + salt) % 102400 for i in range(n)]


def _scheduler(num_tokens: int, caching: bool = True) -> Scheduler:
    return Scheduler(BlockManager(num_tokens // BLOCK, BLOCK, caching), max_num_seqs=8, max_num_batched_tokens=CHUNK)


def _prefill(scheduler: Scheduler, name: str, tokens: list[int]) -> Sequence:
    """Admit a prompt and run the scheduler until its prompt is computed (chunked, as the engine would)."""
    seq = Sequence(name, list(tokens), len(tokens))
    scheduler.add(seq)
    while seq.num_uncomputed_tokens:
        plan = scheduler.schedule()
        assert seq.seq_id in plan.scheduled and not plan.preempted
        scheduler.update(plan.scheduled)
    return seq


def _full_blocks_hit(prompt_tokens: int) -> int:
    """Tokens a repeated prompt gets from the cache: every full block, less the last when it ends the prompt."""
    return (prompt_tokens - 1) // BLOCK * BLOCK


@pytest.mark.parametrize("length", [CONTEXT, CONTEXT - 1, 18000])
def test_the_same_long_prompt_twice_hits_all_but_its_last_block(length: int):
    scheduler = _scheduler(2 * CONTEXT)
    blocks = scheduler.blocks
    tokens = _tokens(length)
    first = _prefill(scheduler, "first", tokens)
    assert first.num_cached_tokens == 0
    first_table = list(first.block_table)
    scheduler.finish("first")
    assert blocks.num_free_blocks == blocks.num_blocks

    second = Sequence("second", list(tokens), length)
    scheduler.add(second)
    plan = scheduler.schedule()
    hit = _full_blocks_hit(length)
    assert second.num_cached_tokens == hit
    assert plan.scheduled == {"second": length - hit}
    assert second.block_table[: hit // BLOCK] == first_table[: hit // BLOCK]  # the very blocks, freed but kept
    assert blocks.hit_tokens == hit


@pytest.mark.parametrize("shared", [100_003, 65_536])
def test_two_long_prompts_sharing_a_prefix_hit_exactly_the_shared_full_blocks(shared: int):
    scheduler = _scheduler(2 * CONTEXT)
    head = _tokens(shared)
    first = _prefill(scheduler, "first", head + _tokens(CONTEXT - 1 - shared, salt=1))
    # the second arrives while the first still holds its blocks: the shared ones are referenced twice
    second = _prefill(scheduler, "second", head + _tokens(CONTEXT - 1 - shared, salt=2))
    shared_blocks = shared // BLOCK
    assert second.num_cached_tokens == shared_blocks * BLOCK
    assert second.block_table[:shared_blocks] == first.block_table[:shared_blocks]
    assert not set(second.block_table[shared_blocks:]) & set(first.block_table)
    assert {scheduler.blocks.ref_counts[b] for b in first.block_table[:shared_blocks]} == {2}
    assert {scheduler.blocks.ref_counts[b] for b in first.block_table[shared_blocks:]} == {1}


def test_uncached_long_prompts_compute_everything_and_hash_nothing():
    scheduler = _scheduler(2 * CONTEXT, caching=False)
    tokens = _tokens(CONTEXT)
    _prefill(scheduler, "first", tokens)
    scheduler.finish("first")
    second = _prefill(scheduler, "second", tokens)
    assert second.num_cached_tokens == 0
    assert scheduler.blocks.hit_tokens == 0 and scheduler.blocks.num_hashed_blocks == 0


def test_each_block_is_hashed_once_whatever_its_position():
    scheduler = _scheduler(4 * CONTEXT)
    blocks = scheduler.blocks
    tokens = _tokens(CONTEXT - 1)
    first = _prefill(scheduler, "first", tokens)  # 64 chunks, each committing only its own new blocks
    assert blocks.num_hashed_blocks == len(tokens) // BLOCK
    for _ in range(3 * BLOCK):  # decoding: a block is hashed when it fills, once
        first.token_ids.append(7)
        scheduler.update(scheduler.schedule().scheduled)
    assert blocks.num_hashed_blocks == first.num_computed_tokens // BLOCK
    assert {len(key) for key in blocks.cached} == {BLOCK_HASH_BYTES}  # block 8,000's key is as small as block 0's

    before = blocks.num_hashed_blocks
    repeat = _prefill(scheduler, "repeat", tokens)  # looked up block by block, then the rest committed
    shared = _prefill(scheduler, "shared", tokens[:50_000] + _tokens(CONTEXT - 50_001, salt=3))
    assert blocks.num_hashed_blocks - before == len(repeat.token_ids) // BLOCK + len(shared.token_ids) // BLOCK
    assert repeat.num_cached_tokens == _full_blocks_hit(len(tokens))
    assert shared.num_cached_tokens == 50_000 // BLOCK * BLOCK


@pytest.mark.parametrize("shared", [0, 64_000])
def test_a_prompt_waiting_for_blocks_is_not_rehashed_each_step(shared: int):
    holder_tokens = 125 * CHUNK
    scheduler = _scheduler(holder_tokens + CHUNK // 2 + BLOCK)  # half a prefill chunk to spare: the next prompt waits
    blocks = scheduler.blocks
    holder = _prefill(scheduler, "holder", _tokens(holder_tokens))
    waiting = Sequence("waiting", holder.token_ids[:shared] + _tokens(CONTEXT - shared, salt=5), CONTEXT)
    scheduler.add(waiting)
    for _ in range(100):
        holder.token_ids.append(1)
        plan = scheduler.schedule()
        assert plan.scheduled == {"holder": 1}
        scheduler.update(plan.scheduled)
    # the waiting prompt's blocks were hashed up to its first miss, once, and it holds the hits meanwhile
    assert blocks.num_hashed_blocks == holder.num_computed_tokens // BLOCK + shared // BLOCK + 1
    assert waiting.block_table == holder.block_table[: shared // BLOCK]
    scheduler.finish("holder")
    assert scheduler.schedule().scheduled == {"waiting": CHUNK}
    assert waiting.num_cached_tokens == shared


def test_a_preempted_long_prompt_gets_its_computed_blocks_back_from_the_cache():
    old_tokens = CONTEXT // 4
    # room for old, one block of its decode and 1,000 blocks of new's prompt: new's prefill runs out half way
    scheduler = _scheduler(old_tokens + BLOCK + 1000 * BLOCK)
    old = _prefill(scheduler, "old", _tokens(old_tokens))
    new = Sequence("new", _tokens(old_tokens, salt=9), old_tokens)
    scheduler.add(new)
    plan = scheduler.schedule()
    while not plan.preempted:
        scheduler.update(plan.scheduled)
        old.token_ids.append(1)  # old decodes a token a step alongside new's prefill
        computed = new.num_computed_tokens // BLOCK * BLOCK
        plan = scheduler.schedule()
    assert plan.preempted == ["new"] and new.num_computed_tokens == 0 and computed > CONTEXT // 16
    scheduler.update(plan.scheduled)
    scheduler.finish("old")
    plan = scheduler.schedule()  # readmitted: what it had computed is still keyed in its freed blocks
    assert new.num_computed_tokens == computed and new.num_cached_tokens == computed
    assert plan.scheduled == {"new": CHUNK}


def test_a_key_names_the_whole_prefix_not_only_its_block():
    scheduler = _scheduler(2 * CONTEXT)
    tokens = _tokens(CONTEXT - 1)
    _prefill(scheduler, "first", tokens)
    # the same 131,055 tokens after block 0, behind a different first block: nothing matches
    other_head = _prefill(scheduler, "other-head", [1] * BLOCK + tokens[BLOCK:])
    assert other_head.num_cached_tokens == 0
    blocks = scheduler.blocks
    assert blocks.hit_tokens == 0 and len(blocks.cached) == 2 * (len(tokens) // BLOCK)
