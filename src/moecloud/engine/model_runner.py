"""Turns a scheduled batch into tensors, runs the model and hands back the hidden rows that need logits."""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from moecloud.engine.model.attention import AttentionGroup, ForwardBatch
from moecloud.engine.model.deepseek import DeepseekForCausalLM
from moecloud.engine.sequence import Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens


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
        compile_cache_dir: str | Path | None = None,
    ) -> None:
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
        self._traced: set[bool] = set()  # the decode graphs dynamo has traced: one sequence (False), several (True)
        c = model.config
        dtype = model.model.embed_tokens.weight.dtype
        # [num_blocks, block_size, kv_lora_rank + qk_rope_head_dim] per layer: the latent, never full K/V
        self.caches = [
            torch.zeros(num_blocks, block_size, c.latent_dim, dtype=dtype, device=device)
            for _ in range(c.num_hidden_layers)
        ]

    def run(self, batch: list[ScheduledSeq]) -> RunOutput:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts: list[int] = []
        decodes: list[int] = []
        groups: list[AttentionGroup] = []
        for i, item in enumerate(batch):
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_tokens
            starts.append(len(ids))
            ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [
                seq.block_table[p // self.block_size] * self.block_size + p % self.block_size for p in range(start, end)
            ]
            if item.num_tokens == 1:
                decodes.append(i)
            else:
                groups.append(self._group([starts[i]], item.num_tokens, [seq], [end]))
        compiled = self._decode is not None and len(decodes) == len(batch) <= self.compile_max_batch
        if decodes:
            groups.append(
                self._group(
                    [starts[i] for i in decodes],
                    1,
                    [batch[i].seq for i in decodes],
                    [batch[i].seq.num_computed_tokens + 1 for i in decodes],
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
        self, starts: list[int], q_len: int, seqs: list[Sequence], context_lens: list[int], min_width: int = 1
    ) -> AttentionGroup:
        width = max(min_width, *(-(-n // self.block_size) for n in context_lens))
        tables = [s.block_table[:width] + [0] * (width - min(width, len(s.block_table))) for s in seqs]
        token_index = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(q_len)[None, :]
        lens = torch.tensor(context_lens, dtype=torch.long)
        # query i of a sequence sits at context position ctx_len - Q + i and sees keys up to it
        last_visible = lens[:, None] - q_len + torch.arange(q_len)[None, :]
        masked = torch.arange(width * self.block_size)[None, None, :] > last_visible[:, :, None]
        return AttentionGroup(
            token_index=token_index.to(self.device),
            block_tables=torch.tensor(tables, dtype=torch.long, device=self.device),
            masked=masked[:, :, None].to(self.device),
        )
