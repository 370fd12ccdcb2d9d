"""Logits -> next tokens, with structured-output masks, penalties, temperature, top-k/top-p/min-p, per-request
seeds and logprobs.

Reported logprobs are those of the model's own distribution (before penalties and temperature), as in
OpenAI's API and vLLM; for a constrained row, the distribution over the tokens its grammar allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecloud.engine.failures import SAMPLE, FaultInjector
from moecloud.engine.sampling_params import SamplingParams
from moecloud.engine.structured import Constraint, Masker


@dataclass
class SamplingRow:
    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    generator: torch.Generator | None
    block_eos: list[int]  # eos ids that may not be sampled yet (min_tokens)
    seq_id: str = ""
    constraint: Constraint | None = None


@dataclass
class TokenChoice:
    token_id: int
    logprob: float | None = None
    rank: int | None = None
    top: list[tuple[int, float]] | None = None  # the most likely alternatives


def finite_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax whose values are all finite (JSON has no NaN or -inf): a NaN row reports the lowest float."""
    lowest = torch.finfo(logits.dtype).min
    return torch.nan_to_num(logits.log_softmax(dim=-1), nan=lowest, posinf=0.0, neginf=lowest)


def top_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int) -> list[TokenChoice]:
    """Per row: the logprob and rank of ``token_ids[row]`` plus the ``k`` most likely tokens."""
    k = min(k, logprobs.shape[1])
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
    ranks = (logprobs > chosen[:, None]).sum(dim=1) + 1
    top_vals, top_ids = logprobs.topk(k, dim=1) if k else (None, None)
    out = []
    for row in range(logprobs.shape[0]):
        top = list(zip(top_ids[row].tolist(), top_vals[row].tolist(), strict=True)) if k else []
        out.append(TokenChoice(int(token_ids[row]), float(chosen[row]), int(ranks[row]), top))
    return out


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """NaN becomes -inf (never chosen) and +inf the largest float, so softmax and argmax stay defined."""
    return torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max, neginf=float("-inf"))


class Sampler:
    """Rows are sampled one by one, and a row that raises gets its exception in place of a choice, so one
    request's failure never becomes its batch's. Whatever the logits and parameters, a row that does not raise
    gets a token of the vocabulary: non-finite logits are never chosen (all non-finite: token 0), and a
    distribution that filters to nothing falls back to the most likely token."""

    def __init__(self, seed: int = 0, faults: FaultInjector | None = None) -> None:
        self._default = torch.Generator().manual_seed(seed)
        self._faults = faults
        self._masker: Masker | None = None  # made for the first constrained row

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> list[TokenChoice | Exception]:
        """``logits`` [B, vocab] float32, one row per sequence that samples this step."""
        results: list[TokenChoice | Exception] = []
        logits, failures = self._mask(logits, rows)
        for i, row in enumerate(rows):
            failed = failures[i]
            if failed is not None:
                results.append(failed)
                continue
            try:
                if self._faults is not None:
                    self._faults.check(SAMPLE, [row.seq_id])
                results.append(TokenChoice(self._choose(self._adjusted(logits[i], row), row)))
            except Exception as exc:  # noqa: BLE001 - the engine decides what the row's failure means
                results.append(exc)
        wanted = [i for i, (r, c) in enumerate(zip(rows, results, strict=True))
                  if r.params.logprobs is not None and isinstance(c, TokenChoice)]
        self._add_logprobs(logits, rows, results, wanted)
        return results

    def _mask(self, logits: torch.Tensor, rows: list[SamplingRow]) -> tuple[torch.Tensor, list[Exception | None]]:
        """The logits with every constrained row's mask applied: for the batch at once, else row by row (a row
        that fails alone, unmasked, with its exception)."""
        if all(row.constraint is None for row in rows):
            return logits, [None] * len(rows)
        if self._masker is None:
            self._masker = Masker()
        try:
            return self._masker(logits, [row.constraint for row in rows])
        except Exception as exc:  # noqa: BLE001 - charged to the rows that fail alone
            if len(rows) == 1:
                return logits, [exc]
        parts = [self._mask(logits[i : i + 1], [row]) for i, row in enumerate(rows)]
        return torch.cat([masked for masked, _ in parts]), [errors[0] for _, errors in parts]

    def _add_logprobs(self, logits: torch.Tensor, rows: list[SamplingRow], results: list[TokenChoice | Exception],
                      wanted: list[int]) -> None:
        """The model's logprobs of the chosen tokens, for all ``wanted`` rows at once, else row by row."""
        if not wanted:
            return
        try:
            tokens = torch.tensor([results[i].token_id for i in wanted], dtype=torch.long)  # type: ignore[union-attr]
            k = max(rows[i].params.logprobs or 0 for i in wanted)
            choices = top_logprobs(finite_log_softmax(logits[wanted]), tokens, k)
        except Exception as exc:  # noqa: BLE001 - charged to the row that raises alone
            if len(wanted) == 1:
                results[wanted[0]] = exc
                return
            for i in wanted:
                self._add_logprobs(logits, rows, results, [i])
            return
        for i, choice in zip(wanted, choices, strict=True):
            choice.top = (choice.top or [])[: rows[i].params.logprobs]
            results[i] = choice

    @staticmethod
    def _adjusted(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
        """The row's logits after penalties and min_tokens' blocked ids (a copy)."""
        logits = logits.clone()
        Sampler._penalize(logits, row)
        vocab = logits.shape[0]
        blocked = [t for t in row.block_eos if 0 <= t < vocab]  # an id outside the vocabulary blocks nothing
        if blocked:
            logits[blocked] = float("-inf")
        return logits

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
            return int(_finite(logits).argmax())
        logits = _finite(logits / p.temperature)
        if p.top_k and p.top_k < logits.shape[0]:
            kth = logits.topk(p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(dim=-1)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            before = sorted_probs.cumsum(0) - sorted_probs  # mass strictly above each token
            cut = before >= p.top_p * sorted_probs.sum()
            cut[0] = False  # the most likely token always stays: a tiny top_p underflows the threshold to 0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs.masked_fill(cut, 0.0))
        if not (torch.isfinite(probs).all() and probs.sum() > 0):  # every logit was -inf (all blocked)
            return int(logits.argmax())
        generator = row.generator or self._default
        return int(torch.multinomial(probs, 1, generator=generator))
