"""Tool-call and reasoning parsers: whole-text results, and the same results however a stream splits the text."""

from __future__ import annotations

import json
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from moecloud.engine.json_stream import JsonScanner
from moecloud.engine.reasoning import ReasoningSplitter, opens_thinking, reasoning_tokens
from moecloud.engine.tool_calls import (
    CallArrayParser,
    DeepSeekToolParser,
    NamedCallParser,
    ParsedMessage,
    TaggedJsonToolParser,
    ToolCall,
    ToolCallParser,
    join_deltas,
    parse_all,
)

WEATHER = {"city": "Paris", "days": [1, 2], "note": "a \"quoted\" } ] brace, ```json"}
DEEPSEEK = (
    "Let me look.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
    f"{json.dumps(WEATHER)}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n"
    "```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
)
TAGGED = (
    f'I will call. <tool_call>{{"name": "get_weather", "arguments": {json.dumps(WEATHER)}}}</tool_call>\n'
    '<tool_call>{"arguments": {"zone": "UTC"}, "name": "get_time"}</tool_call>'
)
ARRAY = json.dumps([{"name": "get_weather", "parameters": WEATHER}, {"parameters": {}, "name": "get_time"}])
CASES: list[tuple[Callable[[], ToolCallParser], str, ParsedMessage]] = [
    (DeepSeekToolParser, DEEPSEEK, ParsedMessage("Let me look.", [ToolCall("get_weather", json.dumps(WEATHER)),
                                                                   ToolCall("get_time", "{}")])),
    (TaggedJsonToolParser, TAGGED, ParsedMessage("I will call. ", [ToolCall("get_weather", json.dumps(WEATHER)),
                                                                   ToolCall("get_time", '{"zone": "UTC"}')])),
    (CallArrayParser, ARRAY, ParsedMessage("", [ToolCall("get_weather", json.dumps(WEATHER)),
                                                ToolCall("get_time", "{}")])),
    (lambda: NamedCallParser("get_weather"), json.dumps(WEATHER),
     ParsedMessage("", [ToolCall("get_weather", json.dumps(WEATHER))])),
]


def streamed(parser: ToolCallParser, text: str, cuts: list[int]) -> ParsedMessage:
    bounds = [0, *sorted(set(cuts)), len(text)]
    deltas = [parser.feed(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    first_of_call = {}
    for delta in deltas:
        for call in delta.calls:  # a call's first delta carries its name, and only its first
            assert (call.name is not None) == (call.index not in first_of_call)
            first_of_call.setdefault(call.index, call)
    return join_deltas([*deltas, parser.finish()])


def test_whole_text_parses_each_format() -> None:
    for make, text, expected in CASES:
        assert parse_all(make(), text) == expected
        assert all(json.loads(call.arguments) is not None for call in expected.calls)


def test_every_single_split_point_gives_the_whole_text_result() -> None:
    for make, text, expected in CASES:
        for cut in range(len(text) + 1):
            assert streamed(make(), text, [cut]) == expected, (make, cut)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(CASES) - 1), st.lists(st.floats(0, 1), max_size=40))
def test_any_splitting_gives_the_whole_text_result(case: int, fractions: list[float]) -> None:
    make, text, expected = CASES[case]
    assert streamed(make(), text, [int(f * len(text)) for f in fractions]) == expected


def test_character_by_character_streams_arguments_in_pieces() -> None:
    parser = DeepSeekToolParser()
    deltas = [parser.feed(char) for char in DEEPSEEK] + [parser.finish()]
    fragments = [c.arguments for d in deltas for c in d.calls if c.index == 0 and c.arguments]
    assert len(fragments) > 10 and "".join(fragments) == json.dumps(WEATHER)


def test_text_without_calls_is_content_and_markers_alone_are_not_lost() -> None:
    for make in (DeepSeekToolParser, TaggedJsonToolParser):
        text = "plain <tool_ answer with < and <｜tool and {\"name\": 1}"
        assert parse_all(make(), text) == ParsedMessage(text, [])
    broken = 'see <tool_call>{"name": oops} then'
    assert parse_all(TaggedJsonToolParser(), broken) == ParsedMessage(broken, [])


def test_a_call_cut_short_keeps_what_arrived() -> None:
    cut = DEEPSEEK[:DEEPSEEK.index('"days"')]
    parsed = parse_all(DeepSeekToolParser(), cut)
    assert parsed.calls == [ToolCall("get_weather", '{"city": "Paris", ')]
    assert parse_all(CallArrayParser(), ARRAY[:30]).calls[0].name == "get_weather"


def test_scanner_spans_and_failures() -> None:
    scanner = JsonScanner(depth=2)
    text = '{"a": [1, {"b": "x"}], "c": -1.5e3, "d": {}} tail'
    used = scanner.feed(text)
    assert scanner.done and text[used:] == " tail"
    assert {p: text[s.start:s.end] for p, s in scanner.spans.items()} == {
        (): text[:used], ("a",): '[1, {"b": "x"}]', ("a", 0): "1", ("a", 1): '{"b": "x"}', ("c",): "-1.5e3",
        ("d",): "{}"}
    for bad in ('{"a" 1}', '{"a": 1,}', "[1 2]", '{"a": 1]', "}"):
        broken = JsonScanner()
        broken.feed(bad)
        assert broken.failed and not broken.done, bad


def test_reasoning_split_whole_and_streamed() -> None:
    text = "I think 2 < 3 </thi and so.</think>\n\nThe answer."
    for thinking, start in ((True, ""), (False, "  <think>")):
        for cut in range(len(start + text) + 1):
            splitter = ReasoningSplitter(thinking)
            parts = [splitter.feed((start + text)[:cut]), splitter.feed((start + text)[cut:]), splitter.finish()]
            assert "".join(p[0] for p in parts) == "I think 2 < 3 </thi and so." == splitter.reasoning
            assert "".join(p[1] for p in parts) == "The answer."
    plain = ReasoningSplitter(False)
    assert plain.feed("<thin") == ("", "") and plain.feed("g> no thinking") == ("", "<thing> no thinking")
    assert plain.reasoning is None
    assert opens_thinking("<｜Assistant｜><think>\n") and not opens_thinking("<｜Assistant｜>")


def test_reasoning_tokens_count_through_the_closing_tag() -> None:
    pieces = ["I", " think", "</thi", "nk>", "Yes", "."]

    def decode(ids: list[int]) -> str:
        return "".join(pieces[i] for i in ids)

    ids = list(range(len(pieces)))
    assert reasoning_tokens(ids, decode, thinking=True) == 4
    assert reasoning_tokens(ids[:2], decode, thinking=True) == 2  # cut while thinking: all of it
    assert reasoning_tokens(ids, decode, thinking=False) == 0
