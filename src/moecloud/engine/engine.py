"""``LLMEngine``: requests in, incremental outputs out. One step is ``schedule() -> run(batch) -> postprocess()``."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from moecloud.engine.engine_config import EngineConfig, PromptTooLong
from moecloud.engine.failures import FORWARD, EngineFailed, FaultInjector, is_fatal
from moecloud.engine.kv_cache import BlockManager
from moecloud.engine.model_config import load_model_config
from moecloud.engine.model_runner import ModelRunner, RunOutput, ScheduledSeq, kv_bytes_per_token
from moecloud.engine.outputs import EngineStats, Logprob, RequestMetrics, RequestOutput
from moecloud.engine.parallel.control import ParallelRunner
from moecloud.engine.parallel.launch import (
    RankGroup,
    for_ranks,
    kv_cache_tokens,
    layout_of,
    load_rank_model,
    new_runner,
    rank_device,
)
from moecloud.engine.requests import RequestState, SampleState
from moecloud.engine.sampler import Sampler, SamplingRow, TokenChoice, finite_log_softmax, top_logprobs
from moecloud.engine.sampling_params import InvalidParameter, SamplingParams
from moecloud.engine.scheduler import Scheduler, SchedulerOutput
from moecloud.engine.sequence import Sequence
from moecloud.engine.stop import StopChecker
from moecloud.engine.structured import StructuredCompiler
from moecloud.engine.tokenizer import IncrementalDetokenizer, Tokenizer

log = logging.getLogger(__name__)


class LLMEngine:
    """Requests in, outputs out. A request that fails while scheduled, run or sampled ends alone, with
    ``RequestOutput.error``; ``step`` raises only when the engine itself cannot go on (``failures.py``).

    ``faults`` (tests only) makes chosen requests fail on purpose.
    """

    def __init__(self, config: EngineConfig, faults: FaultInjector | None = None) -> None:
        config = for_ranks(config)
        self.config = config
        self.layout = layout_of(config)
        self.device = rank_device(config, 0)
        self.dtype = config.resolve_dtype(self.device)
        self.model_config = load_model_config(config.model)
        self.model_name = Path(config.model).resolve().name
        self.tokenizer = Tokenizer(config.model)
        self.max_model_len = config.context_cap(self.model_config.max_position_embeddings)
        if config.quantization not in (None, "int8"):
            raise ValueError(f"quantization {config.quantization!r} is not supported (supported: int8)")
        # ranks 1.. start first: they load while this rank does
        self.ranks = RankGroup(config, self.device) if self.layout.world > 1 else None
        self._finalizer = weakref.finalize(self, self.ranks.close) if self.ranks else None
        try:
            self._build(config)
        except BaseException:
            self.close()
            raise
        self.faults = faults
        self.sampler = Sampler(config.seed, faults, config.structured_mask_threads, self.device)
        self.requests: dict[str, RequestState] = {}
        self._sample_of: dict[str, tuple[RequestState, SampleState]] = {}
        self.eos_ids = set(self.tokenizer.eos_token_ids) | set(self.model_config.eos_token_ids)
        self.structured = StructuredCompiler(self.tokenizer, self.model_config.vocab_size, sorted(self.eos_ids),
                                             config.structured_cache_size, config.structured_lexer_fuel)
        self.prompt_tokens = self.generation_tokens = 0
        self._failed: list[RequestState] = []  # failed during this step, reported by it
        self._failures_in_a_row = 0
        self._schedule_failed = False

    def _build(self, config: EngineConfig) -> None:
        control = self.ranks.control if self.ranks else None
        self.model = load_rank_model(config, self.model_config, self.dtype, self.device, self.max_model_len,
                                     self.ranks.comm if self.ranks else None)
        self.load_seconds = self.model.load_report.seconds  # built and filled in place, int8 quantized as read
        num_blocks = max(kv_cache_tokens(config, self.model, self.device, self.max_model_len, control)
                         // config.block_size, 1)
        log.info("KV cache: %d tokens (%.2f GiB)", num_blocks * config.block_size,
                 num_blocks * config.block_size * kv_bytes_per_token(self.model) / 2**30)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        runner = new_runner(config, self.model, num_blocks, self.device, self.max_model_len)
        self.runner: ModelRunner | ParallelRunner = runner
        if self.ranks is not None:
            assert control is not None
            self.runner = ParallelRunner(runner, control, self.ranks.check, self.ranks.fail)

    # ---- requests in -------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise InvalidParameter("prompt", "the prompt is empty")
        if any(not 0 <= t < self.model_config.vocab_size for t in ids):
            raise InvalidParameter("prompt", f"prompt token ids must be in [0, {self.model_config.vocab_size})")
        params.check_token_ids(self.model_config.vocab_size)
        if len(ids) >= self.max_model_len:
            raise PromptTooLong(len(ids), self.max_model_len)
        room = self.max_model_len - len(ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if len(ids) + max(max_tokens, 1) > capacity:
            raise PromptTooLong(len(ids) + max_tokens, capacity, "the KV cache capacity (prompt + max_tokens)")
        request = RequestState(request_id, text, ids, params, max_tokens, RequestMetrics(arrival_time=time.time()))
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None]
        structured = params.structured
        constraints = [self.structured.constraint(structured) if structured else None for _ in range(params.n)]
        for index in range(params.n):
            seq = Sequence(
                f"{request_id}#{index}", list(ids), len(ids), use_prefix_cache=params.prompt_logprobs is None
            )
            generator = None
            if params.seed is not None:
                # on the logits' device: a seed gives the same tokens on the same device (not across devices)
                generator = torch.Generator(device=self.device).manual_seed(params.seed + index)
            sample = SampleState(
                index,
                seq,
                IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens),
                StopChecker(params.stop, params.include_stop_str_in_output),
                generator,
                [] if params.logprobs is not None else None,
                constraints[index],
            )
            request.samples.append(sample)
        for sample in request.samples:  # only once every sample is built: a refused request leaves no trace
            self._sample_of[sample.seq.seq_id] = (request, sample)
            self.scheduler.add(sample.seq)
        self.requests[request_id] = request
        self.prompt_tokens += len(ids)

    def warm_up(self) -> None:
        """Run the step shapes a server meets (decodes of one and of several sequences) once, so their compile
        happens now rather than in a user's first request, and capture the decode CUDA graphs (on CUDA); leaves no
        trace in counters or expert load."""
        self.runner.capture_graphs()
        if not self.config.compile:
            return
        counters = self.prompt_tokens, self.generation_tokens
        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
        for batch in (1, 2):
            for i in range(batch):
                self.add_request(f"warm-up-{batch}-{i}", [1 + i, 2, 3], params)
            while self.has_unfinished_requests():
                self.step()
        self.prompt_tokens, self.generation_tokens = counters
        for moe in self.model.moe_layers().values():
            moe.expert_load.zero_()

    def abort(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        for sample in request.samples if request else []:
            self.scheduler.finish(sample.seq.seq_id)
            self._sample_of.pop(sample.seq.seq_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.ranks is not None:
            self.ranks.check()  # a rank died: the engine is gone, even with nothing to run
        plan = self._schedule()
        touched: list[RequestState] = []
        if plan is not None and plan.scheduled:
            batch = [ScheduledSeq(self.scheduler.seqs[i], n) for i, n in plan.scheduled.items()]
            now = time.time()
            for part, out in self._forward(batch):
                touched += self._postprocess(part, out, now)
        failed, self._failed = self._failed, []
        return [self._output(r) for r in dict.fromkeys(touched + failed)]

    def _schedule(self) -> SchedulerOutput | None:
        """The step's plan; None when scheduling failed and the request at the head of the queue was failed for
        it (the one the scheduler had not yet seen). A failure with nobody to blame, or one that outlives
        removing its suspect, is the engine's."""
        try:
            plan = self.scheduler.schedule()
        except Exception as exc:
            if is_fatal(exc):
                raise
            if self._schedule_failed or not self.scheduler.waiting:
                raise EngineFailed(f"scheduling failed outside any one request: {exc!r}") from exc
            self._schedule_failed = True
            self._fail(self._sample_of[self.scheduler.waiting[0].seq_id][0], exc, "scheduling")
            return None
        self._schedule_failed = False
        return plan

    def _forward(self, batch: list[ScheduledSeq]) -> list[tuple[list[ScheduledSeq], RunOutput]]:
        """Run ``batch``; if it fails, each sequence alone, failing the requests whose sequence still fails.
        (A re-run rewrites the same KV slots with the same values; only expert-load counts see it twice.)"""
        try:
            return [(batch, self._run(batch))]
        except Exception as exc:
            if len(batch) == 1:
                self._charge(self._sample_of[batch[0].seq.seq_id][0], exc, "the forward pass")
                return []
            if is_fatal(exc):
                raise
            log.warning("a forward of %d sequences failed (%r): running them one by one", len(batch), exc)
        parts = []
        for item in batch:
            if item.seq.seq_id not in self._sample_of:  # its request failed with an earlier sequence
                continue
            try:
                parts.append(([item], self._run([item])))
            except Exception as exc:
                self._charge(self._sample_of[item.seq.seq_id][0], exc, "the forward pass")
        return parts

    def _run(self, batch: list[ScheduledSeq]) -> RunOutput:
        if self.faults is not None:
            self.faults.check(FORWARD, [item.seq.seq_id for item in batch])
        return self.runner.run(batch)

    def _postprocess(self, batch: list[ScheduledSeq], out: RunOutput, now: float) -> list[RequestState]:
        """Record what ``out`` computed, score prompts, sample; a request whose part raises fails alone."""
        samplers, scored_only, touched = [], [], []
        prompt_rows: dict[RequestState, list[tuple[int, int]]] = {}
        for item, start in zip(batch, out.starts, strict=True):
            if item.seq.seq_id not in self._sample_of:  # its request failed with another of its sequences
                continue
            request, sample = self._sample_of[item.seq.seq_id]
            reaches_end = item.seq.num_computed_tokens + item.num_tokens == item.seq.num_tokens
            if request.prompt_logprobs is not None and sample.index == 0:
                prompt_rows[request] = self._prompt_logprob_rows(request, item, start)
            if not self._guard(request, "recording its progress", self.scheduler.update,
                               {item.seq.seq_id: item.num_tokens}):
                continue
            request.metrics.first_scheduled_time = request.metrics.first_scheduled_time or now
            if reaches_end and request.max_tokens == 0:  # prompt scoring: nothing to sample
                scored_only.append((request, sample))
            elif reaches_end:
                samplers.append((request, sample, start + item.num_tokens - 1))
            touched.append(request)
        for request, rows in prompt_rows.items():
            if rows and request.error is None:
                self._guard(request, "scoring its prompt", self._score_prompt, request, out, rows)
        for request, sample in scored_only:
            if request.error is None:
                self._finish(sample, "length")
                self._failures_in_a_row = 0
        self._sample(out, [(r, s, row) for r, s, row in samplers if r.error is None], now)
        return touched

    def _sample(self, out: RunOutput, samplers: list[tuple[RequestState, SampleState, int]], now: float) -> None:
        """Sample the next token of each (request, sample, row of ``out``); logits that fail for the batch are
        computed again row by row."""
        if not samplers:
            return
        try:
            logits = out.logits_at(self.model, [row for _, _, row in samplers])
            rows = [self._sampling_row(r, s) for r, s, _ in samplers]
        except Exception as exc:
            if len(samplers) == 1:
                self._charge(samplers[0][0], exc, "computing its logits")
                return
            if is_fatal(exc):
                raise
            for one in samplers:
                self._sample(out, [one], now)
            return
        for (request, sample, _), choice in zip(samplers, self.sampler(logits, rows), strict=True):
            if request.error is not None:  # another of its samples failed first
                continue
            if isinstance(choice, Exception):
                self._charge(request, choice, "sampling")
            else:
                self._guard(request, "appending its token", self._append, request, sample, choice, now)

    def _guard(self, request: RequestState, stage: str, work: Callable[..., object], *args: object) -> bool:
        """``work(*args)`` for ``request``; if it raises, the request fails. True if it ran."""
        try:
            work(*args)
        except Exception as exc:
            self._charge(request, exc, stage)
            return False
        return True

    def _charge(self, request: RequestState, exc: Exception, stage: str) -> None:
        if is_fatal(exc):
            raise exc
        self._fail(request, exc, stage)

    def _fail(self, request: RequestState, exc: Exception, stage: str) -> None:
        """End ``request`` with an error; the step reports it. Too many in a row and the engine is to blame."""
        log.error("request %s failed while %s", request.request_id, stage, exc_info=exc)
        request.error = f"{type(exc).__name__} while {stage}"
        for sample in request.samples:
            if sample.finish_reason is None:
                self._finish(sample, "error")
        self._failed.append(request)
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self.config.max_consecutive_failures:
            raise EngineFailed(f"{self._failures_in_a_row} requests failed in a row, the last with {exc!r}") from exc

    def _sampling_row(self, request: RequestState, sample: SampleState) -> SamplingRow:
        p = request.params
        outputs = sample.seq.token_ids[sample.seq.num_prompt_tokens :]
        blocked = [] if len(outputs) >= p.min_tokens else sorted(self.eos_ids | set(p.stop_token_ids))
        return SamplingRow(p, request.prompt_ids, outputs, sample.generator, blocked, sample.seq.seq_id,
                           sample.constraint)

    def _prompt_logprob_rows(self, request: RequestState, item: ScheduledSeq, start: int) -> list[tuple[int, int]]:
        """(row, position) pairs whose logits score the next prompt token: position p predicts token p + 1."""
        seq, first = item.seq, item.seq.num_computed_tokens
        scored = len(request.prompt_logprobs or [])
        last = min(first + item.num_tokens, seq.num_prompt_tokens - 1)
        return [(start + p - first, p + 1) for p in range(max(first, scored - 1), last)]

    def _score_prompt(self, request: RequestState, out: RunOutput, rows: list[tuple[int, int]]) -> None:
        logits = out.logits_at(self.model, [row for row, _ in rows])
        targets = torch.tensor([request.prompt_ids[pos] for _, pos in rows], dtype=torch.long, device=logits.device)
        k = request.params.prompt_logprobs or 0
        entries = [self._logprob_dict(choice) for choice in top_logprobs(finite_log_softmax(logits), targets, k)]
        assert request.prompt_logprobs is not None
        request.prompt_logprobs.extend(entries)  # all at once: a failure half-way records nothing

    def _logprob_dict(self, choice: TokenChoice) -> dict[int, Logprob]:
        def entry(token: int, logprob: float, rank: int) -> Logprob:
            tok = self.tokenizer
            return Logprob(logprob, rank, tok.id_to_token(token), tok.token_bytes(token))

        entries = {t: entry(t, lp, rank + 1) for rank, (t, lp) in enumerate(choice.top)}
        entries[choice.token_id] = entry(choice.token_id, choice.logprob, choice.rank)
        return entries

    def _append(self, request: RequestState, sample: SampleState, choice: TokenChoice, now: float) -> None:
        seq, token, p = sample.seq, choice.token_id, request.params
        complete = sample.constraint is not None and sample.constraint.advance(token)  # raises: the token is refused
        seq.token_ids.append(token)
        self.generation_tokens += 1
        self._failures_in_a_row = 0  # a token came out: the engine works
        request.metrics.first_token_time = request.metrics.first_token_time or now
        request.metrics.last_token_time = now
        if sample.logprobs is not None:
            sample.logprobs.append(self._logprob_dict(choice))
        if choice.logprob is not None:
            sample.cumulative_logprob += choice.logprob
        stopped = sample.stop.add(sample.detokenizer.add(token))
        if stopped is not None:
            sample.finish_reason, sample.stop_reason = "stop", stopped
        elif token in p.stop_token_ids or (token in self.eos_ids and not p.ignore_eos):
            sample.finish_reason, sample.stop_reason = "stop", token
        elif complete:  # the grammar allows nothing more
            sample.finish_reason = "stop"
        elif seq.num_output_tokens >= request.max_tokens or seq.num_tokens >= self.max_model_len:
            sample.finish_reason = "length"
        if sample.finish_reason:
            self._finish(sample, sample.finish_reason)

    def _finish(self, sample: SampleState, reason: str) -> None:
        sample.finish_reason = reason
        self.scheduler.finish(sample.seq.seq_id)
        self._sample_of.pop(sample.seq.seq_id, None)

    def _output(self, request: RequestState) -> RequestOutput:
        if request.finished:
            request.metrics.finished_time = time.time()
            self.requests.pop(request.request_id, None)
        return request.output()

    def compute_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [len, vocab] at every position of ``token_ids``, through the paged cache in chunks.

        For scoring and reference checks; it borrows KV blocks, so call it between steps.
        """
        seq = Sequence("score", list(token_ids), len(token_ids), use_prefix_cache=False)
        if not self.blocks.ensure_capacity(seq, len(token_ids)):
            raise PromptTooLong(
                len(token_ids), self.blocks.num_free_blocks * self.blocks.block_size, "the free KV cache"
            )
        chunks = []
        try:
            for start in range(0, len(token_ids), self.config.max_num_batched_tokens):
                seq.num_computed_tokens = start
                n = min(self.config.max_num_batched_tokens, len(token_ids) - start)
                chunks.append(self.runner.run([ScheduledSeq(seq, n)]).logits_at(self.model))
        finally:
            self.blocks.release(seq)
        return torch.cat(chunks)

    # ---- observability -----------------------------------------------------------------------
    def expert_load(self) -> dict[int, list[int]]:
        return {layer: moe.expert_load.tolist() for layer, moe in self.model.moe_layers().items()}

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.blocks.usage,
            kv_cache_tokens=self.blocks.num_blocks * self.blocks.block_size,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_hit_tokens=self.blocks.hit_tokens,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            expert_load=self.expert_load(),
            tensor_parallel_size=self.layout.tp,
            expert_parallel_size=self.layout.ep,
            comm_seconds=self.comm_seconds,
        )

    @property
    def comm_seconds(self) -> float:
        """Rank 0's time in collectives and in sending the step plan (0 on one rank)."""
        return self.ranks.seconds if self.ranks is not None else 0.0

    # ---- across ranks ------------------------------------------------------------------------
    def on_failure(self, callback: Callable[[EngineFailed], None]) -> None:
        """``callback(failure)`` once the engine fails outside a step (another rank died), on another thread:
        an idle engine has no step to raise it from. Never called on one rank."""
        if self.ranks is not None:
            self.ranks.on_failure(callback)

    def close(self) -> None:
        """Stop the other ranks (their processes exit); the engine is unusable afterwards. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
