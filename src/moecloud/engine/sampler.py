"""Logits -> next tokens, with penalties, temperature, top-k/top-p/min-p, per-request seeds and logprobs.

Reported logprobs are those of the model's own distribution (before penalties and temperature), as in
OpenAI's API and vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecloud.engine.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    generator: torch.Generator | None
    block_eos: list[int]  # eos ids that may not be sampled yet (min_tokens)


@dataclass
class TokenChoice:
    token_id: int
    logprob: float | None = None
    rank: int | None = None
    top: list[tuple[int, float]] | None = None  # the most likely alternatives


def top_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int) -> list[TokenChoice]:
    """Per row: the logprob and rank of ``token_ids[row]`` plus the ``k`` most likely tokens."""
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
    ranks = (logprobs > chosen[:, None]).sum(dim=1) + 1
    top_vals, top_ids = logprobs.topk(k, dim=1) if k else (None, None)
    out = []
    for row in range(logprobs.shape[0]):
        top = list(zip(top_ids[row].tolist(), top_vals[row].tolist(), strict=True)) if k else []
        out.append(TokenChoice(int(token_ids[row]), float(chosen[row]), int(ranks[row]), top))
    return out


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self._default = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[TokenChoice]:
        """``logits`` [B, vocab] float32, one row per sequence that samples this step."""
        raw = logits
        logits = logits.clone()
        for i, row in enumerate(rows):
            self._penalize(logits[i], row)
            if row.block_eos:
                logits[i, row.block_eos] = float("-inf")
        tokens = torch.empty(len(rows), dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i] = self._choose(logits[i], row)
        k = max((r.params.logprobs for r in rows if r.params.logprobs is not None), default=None)
        if k is None:
            return [TokenChoice(int(t)) for t in tokens]
        choices = top_logprobs(raw.log_softmax(dim=-1), tokens, k)
        for choice, row in zip(choices, rows, strict=True):
            if row.params.logprobs is None:
                choice.logprob = choice.rank = choice.top = None
            else:
                choice.top = choice.top[: row.params.logprobs]
        return choices

    @staticmethod
    def _penalize(logits: torch.Tensor, row: SamplingRow) -> None:
        p = row.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.output_ids)), dtype=torch.long)
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and row.output_ids:
            ids = torch.tensor(row.output_ids, dtype=torch.long)
            counts = torch.bincount(ids, minlength=logits.shape[0]).to(logits.dtype)
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)

    def _choose(self, logits: torch.Tensor, row: SamplingRow) -> int:
        p = row.params
        if p.greedy:
            return int(logits.argmax())
        logits = logits / p.temperature
        if p.top_k and p.top_k < logits.shape[0]:
            kth = logits.topk(p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            before = sorted_probs.cumsum(0) - sorted_probs  # mass strictly above each token
            sorted_probs = sorted_probs.masked_fill(before >= p.top_p * sorted_probs.sum(), 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        generator = row.generator or self._default
        return int(torch.multinomial(probs, 1, generator=generator))
