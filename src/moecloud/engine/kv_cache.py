"""Paged latent KV blocks: allocation, reference counts and the prefix cache.

A full block is keyed by a 16-byte BLAKE2b digest of its parent block's key and its own token ids, so a
key names a whole prefix while costing the same to compute, store and compare at any position. Freed
blocks keep their key until reused (least recently freed first), so a later request with the same prefix
finds them. The manager sees block ids and token ids, never tensors.

Two different prefixes share a key only on a 128-bit hash collision: by the birthday bound that takes
about 2**64 distinct blocks, far beyond what any cache holds in its lifetime, and BLAKE2b being a
cryptographic hash, a tenant cannot craft a prompt whose blocks collide with another tenant's.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from moecloud.engine.sequence import Sequence

BLOCK_HASH_BYTES = 16
ROOT_HASH = b""  # the parent of a sequence's first block


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """The key of a full block: the parent's key and the block's ids as int64, through BLAKE2b-128."""
    digest = hashlib.blake2b(parent, digest_size=BLOCK_HASH_BYTES)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_keys: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # prefix key -> block id
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        # per sequence: the keys of its leading full blocks computed so far (each block is hashed once, by
        # match_prefix or commit, whichever reaches it first), and how many of its blocks are in ``cached``
        self.seq_keys: dict[str, list[bytes]] = {}
        self.committed: dict[str, int] = {}
        self.hit_tokens = 0
        self.num_hashed_blocks = 0  # block hashes computed since start: what the prefix cache costs

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _keys(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """``seq``'s key list, extended to cover (at least) its first ``num_blocks`` full blocks."""
        keys = self.seq_keys.setdefault(seq.seq_id, [])
        for index in range(len(keys), num_blocks):
            start = index * self.block_size
            keys.append(block_hash(keys[-1] if keys else ROOT_HASH, seq.token_ids[start : start + self.block_size]))
            self.num_hashed_blocks += 1
        return keys

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
        whole prompt hits. Blocks are hashed up to the first miss only.
        """
        if not (self.enable_prefix_caching and seq.use_prefix_cache) or seq.block_table:
            return 0
        blocks: list[int] = []
        for index in range(seq.num_prompt_tokens // self.block_size):
            block = self.cached.get(self._keys(seq, index + 1)[index])
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
        self.committed[seq.seq_id] = len(blocks)
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
        """Key the blocks that ``seq`` has newly and completely computed so later requests can share them."""
        if not self.enable_prefix_caching or not seq.use_prefix_cache:
            return
        done = self.committed.get(seq.seq_id, 0)
        full = seq.num_computed_tokens // self.block_size
        if full <= done:
            return
        keys = self._keys(seq, full)
        for index in range(done, full):
            block = seq.block_table[index]
            self.block_keys[block] = keys[index]
            self.cached.setdefault(keys[index], block)
        self.committed[seq.seq_id] = full

    def release(self, seq: Sequence) -> None:
        # freed last-block-first so the tail of a prefix is reused before its head
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
        seq.block_table = []
        self.committed.pop(seq.seq_id, None)
        self.seq_keys.pop(seq.seq_id, None)
