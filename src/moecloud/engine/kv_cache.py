"""Paged latent KV blocks: allocation, reference counts and the prefix cache.

A full block is keyed by the hash of its tokens chained with the previous block's key, so a key names a
whole prefix. Freed blocks keep their key until reused (least recently freed first), so a later request
with the same prefix finds them. The manager sees block ids and token ids, never tensors.
"""

from __future__ import annotations

from collections import OrderedDict

from moecloud.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_keys: list[tuple | None] = [None] * num_blocks
        self.cached: dict[tuple, int] = {}  # prefix key -> block id
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hashed_blocks: dict[str, int] = {}  # seq_id -> how many of its blocks are keyed
        self.hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _key(self, seq: Sequence, index: int, previous: tuple | None) -> tuple:
        start = index * self.block_size
        return (previous, tuple(seq.token_ids[start : start + self.block_size]))

    def _take_free(self) -> int:
        block, _ = self.free.popitem(last=False)
        key = self.block_keys[block]
        if key is not None and self.cached.get(key) == block:
            del self.cached[key]
        self.block_keys[block] = None
        self.ref_counts[block] = 1
        return block

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks holding ``seq``'s leading full prompt blocks; returns the tokens covered.

        At least one prompt token is always left to compute, so the last matched block is dropped when the
        whole prompt hits.
        """
        if not (self.enable_prefix_caching and seq.use_prefix_cache) or seq.block_table:
            return 0
        blocks: list[int] = []
        key = None
        for index in range(seq.num_prompt_tokens // self.block_size):
            key = self._key(seq, index, key)
            block = self.cached.get(key)
            if block is None:
                break
            blocks.append(block)
        if blocks and len(blocks) * self.block_size >= seq.num_tokens:
            blocks.pop()
        for block in blocks:
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
        seq.block_table = blocks
        self.hashed_blocks[seq.seq_id] = len(blocks)
        self.hit_tokens += len(blocks) * self.block_size
        return len(blocks) * self.block_size

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Give ``seq`` blocks for its first ``num_tokens`` tokens; False (and no change) if too few are free."""
        needed = self.blocks_for(num_tokens) - len(seq.block_table)
        if needed <= 0:
            return True
        if needed > len(self.free):
            return False
        seq.block_table.extend(self._take_free() for _ in range(needed))
        return True

    def commit(self, seq: Sequence) -> None:
        """Key the blocks that ``seq`` has completely computed so later requests can share them."""
        if not self.enable_prefix_caching or not seq.use_prefix_cache:
            return
        done = self.hashed_blocks.get(seq.seq_id, 0)
        full = seq.num_computed_tokens // self.block_size
        key = self.block_keys[seq.block_table[done - 1]] if done else None
        for index in range(done, full):
            key = self._key(seq, index, key)
            block = seq.block_table[index]
            self.block_keys[block] = key
            self.cached.setdefault(key, block)
        self.hashed_blocks[seq.seq_id] = max(done, full)

    def release(self, seq: Sequence) -> None:
        # freed last-block-first so the tail of a prefix is reused before its head
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
        seq.block_table = []
        self.hashed_blocks.pop(seq.seq_id, None)
