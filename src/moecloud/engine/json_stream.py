"""Follows one JSON value as its text arrives, recording where its shallow members start and end.

Tool-call parsers use the spans to stream a call's arguments as raw slices of the model's text: a slice of a
value that is still open is always a prefix of the finished value, so the fragments a stream sends join up to
exactly what a whole-text parse returns. The scanner checks structure (brackets, colons, commas, strings), not
every literal: a caller that needs a valid value parses the finished span.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

Path = tuple[str | int, ...]
_SCALAR_CHARS = set("-+.0123456789eEtruefalsn")
_WHITESPACE = set(" \t\r\n")


@dataclass
class _Frame:
    kind: str  # "{" or "["
    path: Path
    expect: str  # object: key | colon | value | comma; array: value | comma
    members: int = 0
    key: str | int | None = None


@dataclass
class Span:
    start: int
    end: int | None = None  # None: still open


@dataclass
class JsonScanner:
    """Feed text with `feed`; `spans[path]` holds the values at paths up to `depth` deep (the root is `()`)."""

    depth: int = 2
    text: str = ""
    spans: dict[Path, Span] = field(default_factory=dict)
    done: bool = False
    failed: bool = False
    _stack: list[_Frame] = field(default_factory=list)
    _string: list[str] | None = None  # the raw characters of the string being read
    _string_is_key: bool = False
    _escaped: bool = False
    _scalar: Path | None = None  # the path of the number or literal being read
    _started: bool = False

    def feed(self, chunk: str) -> int:
        """Consume `chunk`; returns how many of its characters belong to the value (fewer once it ended)."""
        for i, char in enumerate(chunk):
            if self.done or self.failed:
                return i
            self._step(char)
            if self.failed:
                return i
            self.text += char
        return len(chunk)

    def finish(self) -> None:
        """End of input: a number or literal at the root ends here; anything still open stays open."""
        if self._scalar == () and not self.failed:
            self._end_value((), len(self.text))

    def _step(self, char: str) -> None:
        offset = len(self.text)
        if self._string is not None:
            self._string_char(char, offset)
            return
        if self._scalar is not None:
            if char in _SCALAR_CHARS:
                return
            path, self._scalar = self._scalar, None
            self._end_value(path, offset)
            if self.done:
                return
        if char in _WHITESPACE:
            return
        frame = self._stack[-1] if self._stack else None
        if frame is None:
            if self._started:
                self.failed = True
            else:
                self._started = True
                self._start_value((), char, offset)
            return
        if frame.expect == "value":
            if char == "]" and frame.kind == "[" and frame.members == 0:
                self._close(frame, offset)
                return
            key = frame.members if frame.kind == "[" else frame.key
            assert key is not None
            self._start_value((*frame.path, key), char, offset)
        elif frame.expect == "key":
            if char == '"':
                self._string, self._string_is_key = [], True
            elif char == "}" and frame.members == 0:
                self._close(frame, offset)
            else:
                self.failed = True
        elif frame.expect == "colon":
            if char == ":":
                frame.expect = "value"
            else:
                self.failed = True
        elif char == ",":
            frame.expect = "key" if frame.kind == "{" else "value"
        elif char == ("}" if frame.kind == "{" else "]"):
            self._close(frame, offset)
        else:
            self.failed = True

    def _string_char(self, char: str, offset: int) -> None:
        assert self._string is not None
        if self._escaped:
            self._escaped = False
        elif char == "\\":
            self._escaped = True
        elif char == '"':
            raw, self._string = "".join(self._string), None
            if self._string_is_key:
                self._string_is_key = False
                frame = self._stack[-1]
                frame.key, frame.expect = _decode_key(raw), "colon"
            else:
                self._end_value(self._value_path(), offset + 1)
            return
        self._string.append(char)

    def _value_path(self) -> Path:
        if not self._stack:
            return ()
        frame = self._stack[-1]
        key = frame.members if frame.kind == "[" else frame.key
        assert key is not None
        return (*frame.path, key)

    def _start_value(self, path: Path, char: str, offset: int) -> None:
        if len(path) <= self.depth:
            self.spans[path] = Span(offset)
        if char in "{[":
            self._stack.append(_Frame(char, path, "key" if char == "{" else "value"))
        elif char == '"':
            self._string = []
        elif char in _SCALAR_CHARS:
            self._scalar = path
        else:
            self.failed = True

    def _close(self, frame: _Frame, offset: int) -> None:
        self._stack.pop()
        self._end_value(frame.path, offset + 1)

    def _end_value(self, path: Path, end: int) -> None:
        span = self.spans.get(path)
        if span is not None:
            span.end = end
        if not self._stack:
            self.done = True
            return
        parent = self._stack[-1]
        parent.members += 1
        parent.expect = "comma"


def _decode_key(raw: str) -> str:
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        return raw
