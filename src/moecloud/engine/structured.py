"""Structured output: a sequence's tokens constrained to a JSON schema, a regex, a choice or a Lark grammar.

llguidance compiles a constraint into a matcher; each sampled sequence holds its own copy. Every step the matchers
of a batch's constrained rows fill a token bitmask (on CPU, in parallel), forbidden tokens' logits become -inf on
the logits' own device before penalties, temperature, top-k/p and logprobs see them, and the sampled token advances
the matcher. When the grammar is complete (nothing but EOS may follow) the sequence finishes with "stop".

The matcher advances only when a token is appended, never while a sequence is recomputed after preemption or
read from the prefix cache: those replay tokens the matcher has already consumed.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import numpy as np
import torch

from moecloud.engine.sampling_params import InvalidParameter
from moecloud.engine.tokenizer import Tokenizer

Kind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]
# No free whitespace in JSON: a model may otherwise emit blanks until max_tokens cuts the object short.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class StructuredOutput:
    """What a request's output must match. ``spec`` is the schema's JSON, the regex, the choices' JSON list or the
    Lark grammar; with ``start_after`` the constraint starts once the output contains that text (e.g. ``</think>``:
    free reasoning, constrained answer)."""

    kind: Kind
    spec: str
    start_after: str | None = None

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> StructuredOutput:
        if not isinstance(schema, dict):
            raise InvalidParameter("structured", "a JSON schema must be an object")
        try:
            return cls("json_schema", json.dumps(schema, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidParameter("structured", f"the JSON schema is not JSON: {exc}") from exc

    @classmethod
    def json_object(cls) -> StructuredOutput:
        return cls("json_object", '{"type": "object"}')

    @classmethod
    def regex(cls, pattern: str) -> StructuredOutput:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidParameter("structured", "a regex must be a non-empty string")
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str]) -> StructuredOutput:
        if not options or not all(isinstance(o, str) and o for o in options):
            raise InvalidParameter("structured", "choices must be a non-empty list of non-empty strings")
        return cls("choice", json.dumps(list(options), ensure_ascii=False))

    @classmethod
    def grammar(cls, lark: str) -> StructuredOutput:
        if not isinstance(lark, str) or not lark.strip():
            raise InvalidParameter("structured", "a grammar must be a non-empty Lark grammar")
        return cls("grammar", lark)

    def llguidance_grammar(self) -> str:
        if self.kind in ("json_schema", "json_object"):
            return llguidance.LLMatcher.grammar_from_json_schema(self.spec, defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.spec)
        if self.kind == "choice":
            return llguidance.grammar_from("choice", self.spec)
        return llguidance.LLMatcher.grammar_from_lark(self.spec)


class StructuredOutputError(RuntimeError):
    """A matcher failed while the sequence ran (the request fails alone)."""


class _TokenizerView:
    """Our tokenizer as llguidance's ``TokenizerWrapper`` reads it: each token's bytes, EOS, specials, encode."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: list[int]) -> None:
        self.eos_token_id = eos_ids[0] if eos_ids else None
        self.bos_token_id = tokenizer.bos_token_id
        known = min(tokenizer.vocab_size, vocab_size)
        # ids past the tokenizer's own (padding rows of the embedding) stand for nothing and are never allowed
        self.tokens = [tokenizer.token_bytes(i) for i in range(known)] + [b""] * (vocab_size - known)
        self.special_token_ids = sorted(tokenizer.special_ids)
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        return self._encode(text, add_special_tokens=False)


class StructuredCompiler:
    """Compiles constraints for one tokenizer; the compiled matchers of the latest ``cache_size`` distinct specs are
    kept, and each sequence gets a copy. Thread-safe: the serving layer may compile off the engine's thread."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: list[int], cache_size: int,
                 lexer_fuel: int) -> None:
        self._tokenizer, self._vocab_size, self._eos_ids = tokenizer, vocab_size, eos_ids
        self._cache_size = cache_size
        self._limits = llguidance.LLParserLimits(initial_lexer_fuel=lexer_fuel, verbose_errors=False)
        self._ll_tokenizer: llguidance.LLTokenizer | None = None  # built on first use: ~1 s for a 129k vocabulary
        self._compiled: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                view = _TokenizerView(self._tokenizer, self._vocab_size, self._eos_ids)
                self._ll_tokenizer = llguidance.LLTokenizer(
                    llguidance.TokenizerWrapper(view), n_vocab=self._vocab_size, eos_token=self._eos_ids
                )
            return self._ll_tokenizer

    def compile(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        """A fresh matcher for ``structured``; ``InvalidParameter`` if it does not compile (or if its first
        step already exhausts the lexer's fuel, as a pathological regex does)."""
        key = (structured.kind, structured.spec)
        with self._lock:
            template = self._compiled.get(key)
            if template is not None:
                self._compiled.move_to_end(key)
                return template.deep_copy()
        template = self._build(structured)
        with self._lock:
            self._compiled[key] = template
            while len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
        return template.deep_copy()

    def _build(self, structured: StructuredOutput) -> llguidance.LLMatcher:
        try:
            grammar = structured.llguidance_grammar()
        except ValueError as exc:
            raise InvalidParameter("structured", _short(f"invalid {structured.kind}: {exc}")) from exc
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0, limits=self._limits)
        error = matcher.get_error() or self._probe(matcher)
        if error:
            raise InvalidParameter("structured", _short(f"invalid {structured.kind}: {error}"))
        return matcher

    def _probe(self, matcher: llguidance.LLMatcher) -> str:
        """Take the grammar's first two steps (on a copy for the second), where the lexer is built: a grammar
        whose lexer exhausts its fuel (a pathological regex) fails here, when the request is added, not later."""
        allowed = np.flatnonzero(np.unpackbits(np.frombuffer(matcher.compute_bitmask(), np.uint8), bitorder="little"))
        first = next((int(t) for t in allowed if t not in self._eos_ids), None)
        if matcher.is_error() or first is None:
            return matcher.get_error()
        probe = matcher.deep_copy()
        probe.consume_token(first)
        probe.compute_bitmask()
        return probe.get_error()

    def constraint(self, structured: StructuredOutput) -> Constraint:
        return Constraint(self.compile(structured), self.ll_tokenizer, structured.start_after)


def _short(message: str) -> str:
    message = message.replace("<non-verbose/>", "").strip()
    return message if len(message) <= _MAX_ERROR_CHARS else message[:_MAX_ERROR_CHARS] + "..."


class Constraint:
    """One sampled sequence's matcher, inactive until ``start_after`` appears in its output (if given)."""

    def __init__(self, matcher: llguidance.LLMatcher, ll_tokenizer: llguidance.LLTokenizer,
                 start_after: str | None) -> None:
        self.matcher = matcher
        self._ll_tokenizer = ll_tokenizer
        self._marker = start_after.encode("utf-8") if start_after else None
        self._seen = b""  # the output's tail while looking for the marker

    @property
    def active(self) -> bool:
        return self._marker is None

    def advance(self, token_id: int) -> bool:
        """Consume the sampled token; True when the grammar is complete (nothing but EOS may follow)."""
        if self._marker is not None:
            self._look_for_start(token_id)
            return False
        if not self.matcher.consume_token(token_id):
            raise StructuredOutputError(_short(self.matcher.get_error() or f"token {token_id} was not allowed"))
        return self.matcher.is_stopped()

    def _look_for_start(self, token_id: int) -> None:
        marker = self._marker
        assert marker is not None
        self._seen += self._ll_tokenizer.decode_bytes([token_id])
        at = self._seen.find(marker)
        if at < 0:
            self._seen = self._seen[len(self._seen) - len(marker) + 1:] if len(marker) > 1 else b""
            return
        self._marker = None
        # The token that completed the marker may carry the answer's first bytes: the grammar takes them if it can,
        # else it starts right after them.
        rest = self._ll_tokenizer.tokenize_bytes(self._seen[at + len(marker):])
        if rest and self.matcher.validate_tokens(rest) == len(rest):
            self.matcher.consume_tokens(rest)


class Masker:
    """Applies the masks of a batch's constraints: llguidance fills their bitmasks (one row each, in parallel for
    several), and one lookup turns the bits into a boolean mask on the logits' device."""

    def __init__(self) -> None:
        self._executor = llguidance.LLExecutor()
        self._byte_bits: dict[torch.device, torch.Tensor] = {}  # [256, 8]: each byte's bits, lowest first

    def __call__(self, logits: torch.Tensor, constraints: Sequence[Constraint | None]
                 ) -> tuple[torch.Tensor, list[Exception | None]]:
        """``logits`` [B, vocab] (one row per constraint, on any device) with the tokens each active constraint
        forbids at -inf, and per row the exception of a matcher that failed (its row is left as it was)."""
        rows = [i for i, c in enumerate(constraints) if c is not None and c.active]
        errors: list[Exception | None] = [None] * len(constraints)
        if not rows:
            return logits, errors
        vocab = logits.shape[1]
        bitmask = torch.full((len(rows), (vocab + 31) // 32), -1, dtype=torch.int32)
        matchers = [constraints[i].matcher for i in rows]  # type: ignore[union-attr]
        if len(matchers) == 1:  # no hand-off to the pool's threads for one row
            matchers[0].unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.shape[1] * 4)
        else:
            self._executor.unsafe_compute_mask_ptr([(m, k) for k, m in enumerate(matchers)], bitmask.data_ptr(),
                                                   bitmask.shape[1] * 4, len(rows))
        for k, (i, matcher) in enumerate(zip(rows, matchers, strict=True)):
            if matcher.is_error():
                errors[i] = StructuredOutputError(_short(matcher.get_error()))
                bitmask[k] = -1
        table = self._byte_bits.get(logits.device)
        if table is None:
            table = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool().to(logits.device)
            self._byte_bits[logits.device] = table
        # little-endian words: bit b of a word is bit b % 8 of its byte b // 8
        index = bitmask.view(torch.uint8).to(device=logits.device, dtype=torch.int64, non_blocking=True)
        allowed = table[index].reshape(len(rows), -1)[:, :vocab]
        if len(rows) == len(constraints):
            return logits.masked_fill(~allowed, float("-inf")), errors
        masked = logits.clone()
        picked = torch.tensor(rows, device=logits.device)
        masked[picked] = logits[picked].masked_fill(~allowed, float("-inf"))
        return masked, errors
