"""Tool calls in a model's text, parsed as the text streams in.

Four formats, one interface (`feed(text) -> ParseDelta`, then `finish()`):
- `DeepSeekToolParser`: DeepSeek-V3's tool-call tokens, as its chat template renders them:
  ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>``
  (more calls separated by a newline) ``<｜tool▁calls▁end｜>``.
- `TaggedJsonToolParser`: the documented fallback for templates without tool support,
  ``<tool_call>{"name": NAME, "arguments": {...}}</tool_call>``, once per call.
- `NamedCallParser`: the whole output is the arguments of one known function (`tool_choice` naming it, whose
  output is constrained to the function's parameter schema).
- `CallArrayParser`: the whole output is ``[{"name": NAME, "parameters": {...}}, ...]`` (`tool_choice:
  "required"`, constrained the same way).

Arguments stream as raw slices of the model's text, so the fragments of a call join up to exactly the
arguments a whole-text parse (`parse_all`) returns: `parse_all` is the streaming parser fed once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from moecloud.engine.json_stream import JsonScanner, Span

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, CALL_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
FENCE_OPEN, FENCE_CLOSE = "```json\n", "\n```"
TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
MAX_CALL_HEAD = 512  # characters between a call's begin token and its name's newline: more is not a call


@dataclass
class CallDelta:
    index: int
    name: str | None = None  # set on a call's first delta only
    arguments: str = ""


@dataclass
class ParseDelta:
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def add_arguments(self, index: int, text: str) -> None:
        if text:
            self.calls.append(CallDelta(index, arguments=text))


@dataclass
class ToolCall:
    name: str
    arguments: str


@dataclass
class ParsedMessage:
    content: str
    calls: list[ToolCall]


class ToolCallParser(Protocol):
    def feed(self, text: str) -> ParseDelta: ...

    def finish(self) -> ParseDelta: ...


def parse_all(parser: ToolCallParser, text: str) -> ParsedMessage:
    """The whole-text parse: the streaming parser fed `text` at once, its deltas joined."""
    return join_deltas([parser.feed(text), parser.finish()])


def join_deltas(deltas: list[ParseDelta]) -> ParsedMessage:
    content, calls = "", []
    for delta in deltas:
        content += delta.content
        for call in delta.calls:
            if call.name is not None:
                calls.append(ToolCall(call.name, call.arguments))
            else:
                calls[call.index].arguments += call.arguments
    return ParsedMessage(content, calls)


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of one of `markers` (kept until they tell)."""
    for k in range(min(max(len(m) for m in markers) - 1, len(text)), 0, -1):
        if any(m.startswith(text[-k:]) for m in markers):
            return k
    return 0


def _find_first(text: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    found = [(text.find(m), m) for m in markers if m in text]
    return min(found) if found else None


class _MarkerParser:
    """Shared buffering: text is examined once enough has arrived to rule out a marker's start."""

    def __init__(self) -> None:
        self._buffer = ""
        self._calls = 0
        self._spaces = ""  # whitespace after a call, sent only if more content follows it

    def feed(self, text: str) -> ParseDelta:
        self._buffer += text
        return self._run(final=False)

    def finish(self) -> ParseDelta:
        return self._run(final=True)

    def _run(self, final: bool) -> ParseDelta:
        out = ParseDelta()
        while self._advance(out, final):
            pass
        return out

    def _advance(self, out: ParseDelta, final: bool) -> bool:
        raise NotImplementedError

    def _content(self, out: ParseDelta, text: str, final: bool) -> None:
        """Content, except that whitespace after a call waits for something else to follow."""
        if not self._calls:
            out.content += text
            return
        text = self._spaces + text
        if text.strip():
            out.content += text
            self._spaces = ""
        elif not final:
            self._spaces = text

    def _text_until(self, out: ParseDelta, markers: tuple[str, ...], final: bool) -> str | None:
        """Send content up to the first marker and return it, consuming it; None if none has arrived."""
        hit = _find_first(self._buffer, markers)
        if hit is not None:
            index, marker = hit
            self._content(out, self._buffer[:index], final)
            self._buffer = self._buffer[index + len(marker):]
            return marker
        keep = 0 if final else held_back(self._buffer, markers)
        self._content(out, self._buffer[:len(self._buffer) - keep], final)
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return None


class DeepSeekToolParser(_MarkerParser):
    def __init__(self) -> None:
        super().__init__()
        self._state = "text"
        self._close = FENCE_CLOSE

    def _advance(self, out: ParseDelta, final: bool) -> bool:
        state = self._state
        if state == "text":
            marker = self._text_until(out, (CALLS_BEGIN, CALL_BEGIN), final)
            self._state = {None: "text", CALLS_BEGIN: "calls", CALL_BEGIN: "head"}[marker]
            return marker is not None
        if state in ("calls", "close"):
            return self._expect(final)
        if state == "head":
            return self._head(out, final)
        if state == "open":
            if not final and FENCE_OPEN.startswith(self._buffer):
                return False
            fenced = self._buffer.startswith(FENCE_OPEN)
            self._buffer = self._buffer[len(FENCE_OPEN):] if fenced else self._buffer
            self._close, self._state = (FENCE_CLOSE if fenced else CALL_END), "arguments"
            return True
        return self._arguments(out, final)

    def _expect(self, final: bool) -> bool:
        """Between calls (or after a call's fence): the next token, whitespace aside."""
        self._buffer = self._buffer.lstrip()
        wanted = (CALL_BEGIN, CALLS_END) if self._state == "calls" else (CALL_END,)
        for marker in wanted:
            if self._buffer.startswith(marker):
                self._buffer = self._buffer[len(marker):]
                self._state = {CALL_BEGIN: "head", CALLS_END: "text", CALL_END: "calls"}[marker]
                return True
        if not self._buffer or (not final and any(m.startswith(self._buffer) for m in wanted)):
            return False
        self._state = "text"  # not the format: what follows is content
        return True

    def _head(self, out: ParseDelta, final: bool) -> bool:
        sep = self._buffer.find(CALL_SEP)
        newline = self._buffer.find("\n", sep + len(CALL_SEP)) if sep >= 0 else -1
        if newline >= 0:
            name = self._buffer[sep + len(CALL_SEP):newline].strip()
            self._buffer = self._buffer[newline + 1:]
            out.calls.append(CallDelta(self._calls, name=name))
            self._calls += 1
            self._state = "open"
            return True
        if final or len(self._buffer) > MAX_CALL_HEAD:
            self._content(out, CALL_BEGIN + self._buffer, final)
            self._buffer, self._state = "", "text"
            return final is False
        return False

    def _arguments(self, out: ParseDelta, final: bool) -> bool:
        index = self._buffer.find(self._close)
        if index >= 0:
            out.add_arguments(self._calls - 1, self._buffer[:index])
            self._buffer = self._buffer[index + len(self._close):]
            self._state = "close" if self._close == FENCE_CLOSE else "calls"
            return True
        keep = 0 if final else held_back(self._buffer, (self._close,))
        out.add_arguments(self._calls - 1, self._buffer[:len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return False


class TaggedJsonToolParser(_MarkerParser):
    def __init__(self) -> None:
        super().__init__()
        self._call: _JsonCall | None = None
        self._closing = False

    def _advance(self, out: ParseDelta, final: bool) -> bool:
        if self._closing:
            self._buffer = self._buffer.lstrip()
            if self._buffer.startswith(TAG_CLOSE):
                self._buffer = self._buffer[len(TAG_CLOSE):]
            elif self._buffer == "" or (not final and TAG_CLOSE.startswith(self._buffer)):
                return False
            self._closing = False  # a missing closing tag is forgiven
            return True
        if self._call is None:
            if self._text_until(out, (TAG_OPEN,), final) is None:
                return False
            self._call = _JsonCall(self._calls, JsonScanner(depth=1))
            return True
        call = self._call
        used = call.scanner.feed(self._buffer)
        self._buffer = self._buffer[used:]
        call.emit(out, ("name",), ("arguments",), ("parameters",))
        if call.scanner.done or call.scanner.failed or final:
            self._end_call(out, call, final)
            return not final
        return False

    def _end_call(self, out: ParseDelta, call: _JsonCall, final: bool) -> None:
        self._call = None
        if call.named:
            call.emit(out, ("name",), ("arguments",), ("parameters",), final=True)
            self._calls += 1
            self._closing = call.scanner.done
        else:  # not a call after all: what the model wrote is content
            self._content(out, TAG_OPEN + call.scanner.text, final)


class _JsonCall:
    """One call object as it arrives: its name once complete, then its arguments' raw text."""

    def __init__(self, index: int, scanner: JsonScanner) -> None:
        self.index = index
        self.scanner = scanner
        self.named = False
        self.sent = 0  # characters of the arguments sent

    def emit(self, out: ParseDelta, name_path: tuple[str | int, ...], *argument_paths: tuple[str | int, ...],
             final: bool = False) -> None:
        scanner = self.scanner
        if not self.named:
            span = scanner.spans.get(name_path)
            if span is None or span.end is None:
                return
            try:
                name = json.loads(scanner.text[span.start:span.end])
            except ValueError:
                return
            if not isinstance(name, str):
                return
            out.calls.append(CallDelta(self.index, name=name))
            self.named = True
        span = next((scanner.spans[p] for p in argument_paths if p in scanner.spans), None)
        if span is not None:
            self.send_span(out, span)

    def send_span(self, out: ParseDelta, span: Span) -> None:
        end = len(self.scanner.text) if span.end is None else span.end
        start = span.start + self.sent
        if end > start:
            out.add_arguments(self.index, self.scanner.text[start:end])
            self.sent = end - span.start


class NamedCallParser:
    """The output is one call's arguments (a JSON object); the name is known before any text arrives."""

    def __init__(self, name: str) -> None:
        self._call = _JsonCall(0, JsonScanner(depth=0))
        self._name = name

    def feed(self, text: str) -> ParseDelta:
        out = ParseDelta()
        if not self._call.named:
            out.calls.append(CallDelta(0, name=self._name))
            self._call.named = True
        self._call.scanner.feed(text)
        span = self._call.scanner.spans.get(())
        if span is not None:
            self._call.send_span(out, span)
        return out

    def finish(self) -> ParseDelta:
        return self.feed("")


class CallArrayParser:
    """The output is ``[{"name": ..., "parameters": {...}}, ...]``; calls are sent in order as they form."""

    def __init__(self) -> None:
        self._scanner = JsonScanner(depth=2)
        self._calls: list[_JsonCall] = []

    def feed(self, text: str) -> ParseDelta:
        out = ParseDelta()
        scanner = self._scanner
        scanner.feed(text)
        index = len(self._calls) - 1 if self._calls else 0
        while (index,) in scanner.spans:
            if index == len(self._calls):
                self._calls.append(_JsonCall(index, scanner))  # one scanner for the array; paths carry the index
            call = self._calls[index]
            call.emit(out, (index, "name"), (index, "parameters"), (index, "arguments"))
            if scanner.spans[(index,)].end is None or not call.named:
                break
            index += 1
        return out

    def finish(self) -> ParseDelta:
        self._scanner.finish()
        return self.feed("")
