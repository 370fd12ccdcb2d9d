"""Engine logprobs -> OpenAI's two logprob shapes (legacy completions and chat)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moecloud.engine.outputs import Logprob, PositionLogprobs

TokenText = Callable[[int], str]
_FLOOR = -9999.0  # JSON has no -inf; OpenAI clients treat this as "impossible"


def _finite(logprob: float) -> float:
    return logprob if logprob >= _FLOOR else _FLOOR  # NaN fails the comparison too


def _chosen(entry: PositionLogprobs | None, token_id: int, token_text: TokenText) -> tuple[str, float | None]:
    if entry is not None and token_id in entry:
        return entry[token_id].decoded_token, _finite(entry[token_id].logprob)
    return token_text(token_id), None


def _ranked(entry: PositionLogprobs) -> list[Logprob]:
    return sorted(entry.values(), key=lambda lp: lp.rank)


def completion_logprobs(token_ids: Sequence[int], entries: Sequence[PositionLogprobs | None],
                        token_text: TokenText, text_offset: int = 0) -> dict[str, list[object]]:
    """Legacy completions shape; `text_offset` is where the first token starts in the choice's text."""
    result: dict[str, list[object]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, entry in zip(token_ids, entries, strict=False):
        token, logprob = _chosen(entry, token_id, token_text)
        result["tokens"].append(token)
        result["token_logprobs"].append(logprob)
        result["top_logprobs"].append(None if entry is None else {lp.decoded_token: _finite(lp.logprob)
                                                                  for lp in _ranked(entry)})
        result["text_offset"].append(text_offset)
        text_offset += len(token)
    return result


def merge_completion_logprobs(first: dict[str, list[object]], second: dict[str, list[object]]) -> None:
    for key, values in second.items():
        first[key].extend(values)


def _chat_token(token: str, logprob: float, raw: bytes = b"") -> dict[str, object]:
    return {"token": token, "logprob": _finite(logprob), "bytes": list(raw or token.encode("utf-8"))}


def chat_logprobs(token_ids: Sequence[int], entries: Sequence[PositionLogprobs | None], top: int,
                  token_text: TokenText) -> list[dict[str, object]]:
    """Chat shape: one record per token, with its `top` most likely alternatives."""
    content = []
    for token_id, entry in zip(token_ids, entries, strict=False):
        token, logprob = _chosen(entry, token_id, token_text)
        raw = entry[token_id].token_bytes if entry is not None and token_id in entry else b""
        record = _chat_token(token, logprob if logprob is not None else _FLOOR, raw)
        alternatives = _ranked(entry)[:top] if entry is not None else []
        record["top_logprobs"] = [_chat_token(lp.decoded_token, lp.logprob, lp.token_bytes) for lp in alternatives]
        content.append(record)
    return content
