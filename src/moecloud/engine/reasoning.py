"""R1-style thinking: ``<think>`` ... ``</think>`` then the answer, split as the text streams in.

A reasoning checkpoint's chat template opens the block in the generation prompt (DeepSeek-R1 ends it with
``<｜Assistant｜><think>\\n``), so the output starts inside the thinking; a model may also open the block itself
as the first thing it writes. The whitespace between ``</think>`` and the answer belongs to neither.
"""

from __future__ import annotations

from collections.abc import Callable

from moecloud.engine.tool_calls import held_back

THINK_START, THINK_END = "<think>", "</think>"


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt leaves the model inside a thinking block."""
    return prompt.rstrip().endswith(THINK_START)


class ReasoningSplitter:
    """`feed(text) -> (reasoning, answer)` deltas; `reasoning` stays None when the output has no thinking."""

    def __init__(self, thinking: bool) -> None:
        self._state = "thinking" if thinking else "start"
        self._buffer = ""
        self.reasoning: str | None = "" if thinking else None

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        return self._run(final=False)

    def finish(self) -> tuple[str, str]:
        return self._run(final=True)

    def _run(self, final: bool) -> tuple[str, str]:
        reasoning, answer = "", ""
        while True:
            if self._state == "start":
                head = self._buffer.lstrip()
                if head.startswith(THINK_START):
                    self._buffer, self._state, self.reasoning = head[len(THINK_START):], "thinking", ""
                    continue
                if not final and THINK_START.startswith(head):
                    break
                self._state = "answer"
            if self._state == "thinking":
                end = self._buffer.find(THINK_END)
                if end < 0:
                    keep = 0 if final else held_back(self._buffer, (THINK_END,))
                    reasoning += self._buffer[:len(self._buffer) - keep]
                    self._buffer = self._buffer[len(self._buffer) - keep:]
                    break
                reasoning += self._buffer[:end]
                self._buffer, self._state = self._buffer[end + len(THINK_END):], "gap"
            if self._state == "gap":
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    break
                self._state = "answer"
            answer += self._buffer
            self._buffer = ""
            break
        if self.reasoning is not None:
            self.reasoning += reasoning
        return reasoning, answer


def reasoning_tokens(token_ids: list[int], decode: Callable[[list[int]], str], thinking: bool) -> int:
    """How many of the output's tokens are thinking, the one that closes the block included."""
    splitter = ReasoningSplitter(thinking)
    splitter.feed(decode(token_ids))
    splitter.finish()
    if splitter.reasoning is None:
        return 0
    low, high = 0, len(token_ids)  # the shortest prefix whose text closes the block (closing grows with length)
    if THINK_END not in decode(token_ids):
        return high
    while low < high:
        middle = (low + high) // 2
        if THINK_END in decode(token_ids[:middle]):
            high = middle
        else:
            low = middle + 1
    return low
