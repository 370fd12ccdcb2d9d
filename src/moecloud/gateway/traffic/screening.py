"""Screening in the request path: where the text of a request and of an answer lives, what a policy decides
about it, how a decision is recorded (the audit chain and a metric), and ``StreamScreen`` for streamed answers.

Each string is screened alone (the unit the detectors were measured on), up to ``ALONE_SLOTS`` of them; a body
with more (thousands of tiny messages, each a detector run of ~0.5 ms) is screened in batches: consecutive
strings joined by a blank line up to ``BATCH_CHARS``, a finding's span mapped back to the strings it covers.
A redaction replaces each screened string in place (the rest of the body is untouched).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import Counter

from moecloud.security import Action, Actions, Category, Finding, Policy, Verdict
from moecloud.security.findings import Direction, fired_categories
from moecloud.security.screen import moved, redact, screen_of, verify_input, verify_output
from moecloud.store import Database, audit

ALONE_SLOTS = 64  # up to this many strings are screened one by one
BATCH_CHARS = 2048  # beyond that, strings screened together (a longer one is screened alone)
INLINE_CHARS = 16_384  # texts up to this many characters are screened on the event loop (well under 10 ms)
SEPARATOR = "\n\n"
AUDIT_ACTOR = "gateway"


@dataclass(frozen=True)
class TextSlot:
    """One string in a JSON body: ``holder[key]``, which a client names ``param`` (``messages[2].content``)."""

    holder: dict[str, Any] | list[Any]
    key: str | int
    param: str

    @property
    def text(self) -> str:
        return self.holder[self.key]  # type: ignore[index]

    def replace(self, text: str) -> None:
        self.holder[self.key] = text  # type: ignore[index]


def _slot(holder: Any, key: str | int, param: str) -> Iterator[TextSlot]:
    """The slot ``holder[key]`` if it holds a string; nothing for any other shape."""
    value = holder.get(key) if isinstance(holder, dict) else holder[key] if isinstance(holder, list) else None
    if isinstance(value, str):
        yield TextSlot(holder, key, param)


def _parts(holder: Any, key: str, param: str, types: tuple[str, ...] | None = None) -> Iterator[TextSlot]:
    """``holder[key]`` as a string, or the ``text`` of each part of it that is a list (of ``types`` only)."""
    value = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(value, str):
        yield TextSlot(holder, key, param)
    elif isinstance(value, list):
        for i, part in enumerate(value):
            if isinstance(part, dict) and (types is None or part.get("type") in types):
                yield from _slot(part, "text", f"{param}[{i}].text")


def prompt_slots(body: dict[str, Any], field: str) -> list[TextSlot]:
    """The prompt's text: every message's content (string or text parts; system included) for ``messages``;
    ``prompt`` (a string or a list of strings: token ids are not text); ``instructions`` and ``input`` (a
    string, or its items' content as a string or text parts) for the Responses API."""
    slots: list[TextSlot] = []
    value = body.get(field)
    if field == "messages" and isinstance(value, list):
        for i, message in enumerate(value):
            slots += _parts(message, "content", f"messages[{i}].content")
    elif field == "prompt":
        if isinstance(value, list):
            for i in range(len(value)):
                slots += _slot(value, i, f"prompt[{i}]")
        else:
            slots += _slot(body, "prompt", "prompt")
    elif field == "input":
        slots += _slot(body, "instructions", "instructions")
        if isinstance(value, list):
            for i, item in enumerate(value):
                slots += _parts(item, "content", f"input[{i}].content")
        else:
            slots += _slot(body, "input", "input")
    return slots


def answer_slots(items: list[Any], *, responses: bool, billed: bool = False) -> list[TextSlot]:
    """The generated text of chat or completion ``choices`` (message content, completion text) or of a
    response's ``output`` (its messages' output text). ``billed``: also reasoning and tool-call arguments, and
    every part of a response's items: what an answer without usage is billed by."""
    slots: list[TextSlot] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if responses:
            if billed:
                slots += _slot(item, "arguments", f"output[{i}].arguments")
                slots += _parts(item, "content", f"output[{i}].content")
            elif item.get("type", "message") == "message":
                slots += _parts(item, "content", f"output[{i}].content", ("output_text",))
            continue
        message = item.get("message")
        if not isinstance(message, dict):
            slots += _slot(item, "text", f"choices[{i}].text")
            continue
        slots += _slot(message, "content", f"choices[{i}].message.content")
        if billed:
            slots += _slot(message, "reasoning_content", f"choices[{i}].message.reasoning_content")
            calls = message.get("tool_calls")
            for j, call in enumerate(calls if isinstance(calls, list) else []):
                function = call.get("function") if isinstance(call, dict) else None
                slots += _slot(function, "arguments", f"choices[{i}].message.tool_calls[{j}].function.arguments")
    return slots


@dataclass(frozen=True)
class Decision:
    """What screening found in one direction of one request and what it did: ``action`` is block if any
    finding's category blocks, else redact if any redacts, else log. ``param``: the first field blocked."""

    direction: Direction
    findings: tuple[Finding, ...]
    action: Action
    actions: Actions
    param: str | None = None

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def categories(self) -> list[Category]:
        return fired_categories(self.findings)


def decide(direction: Direction, findings: list[Finding], actions: Actions, param: str | None = None) -> Decision:
    taken = {actions.of(finding.category) for finding in findings}
    action: Action = "block" if "block" in taken else "redact" if "redact" in taken else "log"
    return Decision(direction, tuple(findings), action, actions, param)


def verifier(direction: Direction) -> Callable[[str, Policy], Verdict]:
    return verify_input if direction == "input" else verify_output


def screen_slots(slots: list[TextSlot], policy: Policy, direction: Direction) -> Decision | None:
    """Screen ``slots`` under ``policy``; unless blocked, redact them in place. None: nothing fired."""
    verify = verifier(direction)
    actions = policy.actions(direction)
    findings: list[Finding] = []
    param: str | None = None
    redactions: dict[int, list[Finding]] = {}
    for batch in _batches(slots):
        text = SEPARATOR.join(slots[i].text for i in batch)
        verdict = verify(text, policy)
        starts, position = [], 0
        for i in batch:
            starts.append(position)
            position += len(slots[i].text) + len(SEPARATOR)
        # the narrowest finding first: it names the field best (the classifier's spans the whole batch)
        for finding in sorted(verdict.findings, key=lambda found: found.span[1] - found.span[0]):
            findings.append(finding)
            action = actions.of(finding.category)
            for i, start in zip(batch, starts, strict=True):
                end = start + len(slots[i].text)
                if param is None and action == "block" and start <= finding.span[0] < end + len(SEPARATOR):
                    param = slots[i].param
                low, high = max(finding.span[0], start), min(finding.span[1], end)
                if low < high and finding.kind is not None and action == "redact":
                    redactions.setdefault(i, []).append(moved(finding, low - start, high - start))
    if not findings:
        return None
    decision = decide(direction, findings, actions, param)
    if not decision.blocked:
        for i, found in redactions.items():
            slots[i].replace(redacted(slots[i].text, found, policy, verify))
    return decision


def redacted(text: str, findings: list[Finding], policy: Policy, verify: Callable[[str, Policy], Verdict]) -> str:
    """``text`` with ``findings`` redacted, then screened again for what they hid (one span can keep its
    neighbour from matching; ``Verdict.redacted`` repeats the same way)."""
    return verify(redact(text, findings), policy).redacted if findings else text


async def screen_slots_async(slots: list[TextSlot], policy: Policy, direction: Direction) -> Decision | None:
    """``screen_slots``, in a worker thread when the text is long enough to stall the event loop."""
    if sum(len(slot.text) for slot in slots) <= INLINE_CHARS:
        return screen_slots(slots, policy, direction)
    return await anyio.to_thread.run_sync(screen_slots, slots, policy, direction)


def _batches(slots: list[TextSlot]) -> Iterator[list[int]]:
    if len(slots) <= ALONE_SLOTS:
        yield from ([i] for i in range(len(slots)))
        return
    batch: list[int] = []
    size = 0
    for i, slot in enumerate(slots):
        if batch and size + len(slot.text) > BATCH_CHARS:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += len(slot.text) + len(SEPARATOR)
    if batch:
        yield batch


@dataclass
class ScreeningRecorder:
    """Every decision counted in ``moecloud_gateway_screening_decisions_total`` (per category, with the
    policy's action for it) and appended to the audit chain, off the event loop; the raw prompt only with
    ``keep_prompt``."""

    database: Database
    audit_key: bytes
    counter: Counter

    async def record(self, decision: Decision, *, request_id: str, key: str, tenant: str, model: str,
                     prompt: str | None = None) -> None:
        for category in decision.categories:
            self.counter.labels(decision.direction, category, decision.actions.of(category)).inc()
        details: dict[str, Any] = {
            "direction": decision.direction, "categories": decision.categories, "action": decision.action,
            "findings": [{"detector": f.detector, "category": f.category, "score": f.score}
                         for f in decision.findings],
            "key": key, "tenant": tenant, "model": model,
        }
        if prompt is not None:
            details["prompt"] = prompt
        with anyio.CancelScope(shield=True):  # a client hanging up does not lose the record
            await anyio.to_thread.run_sync(self._append, f"screen.{decision.direction}", request_id, details)

    def _append(self, action: str, target: str, details: dict[str, Any]) -> None:
        with self.database.write() as session:
            audit.append(session, self.audit_key, actor=AUDIT_ACTOR, action=action, target=target, details=details)


_BOUNDARY = re.compile(r"[.!?](?=\s)|[。！？\n]")


@dataclass
class _Held:
    pending: str = ""  # not yet released
    context: str = ""  # the last released characters, as generated (screened again with the next window)
    hidden: list[Finding] = field(default_factory=list)  # the spans of ``context`` released redacted
    sent: str = ""  # everything released, as sent (redacted)
    blocked: bool = False
    cut: bool = False  # the client was sent the choice's final chunk


@dataclass
class StreamScreen:
    """Screens a streamed answer per choice: text is held until a line or sentence ends (or ``window`` characters
    wait), then screened together with the last ``tail`` characters already released, and released redacted.

    A window cut for size keeps its last ``tail`` characters back for the next one, so a number or secret
    shorter than that is always seen whole before any of it is released. A redacted span that runs past a cut
    is released whole, one that only redacting its neighbour uncovers included. ``feed`` and ``flush`` return
    what to send (possibly ""), and whether the choice is now blocked (nothing more of it may be sent)."""

    policy: Policy
    window: int
    tail: int
    findings: list[Finding] = field(default_factory=list)
    _choices: dict[Any, _Held] = field(default_factory=dict)

    def feed(self, index: Any, text: str) -> tuple[str, bool]:
        held = self._choices.setdefault(index, _Held())
        if held.blocked:
            return "", True
        held.pending += text
        boundary = _last_boundary(held.pending)
        if boundary:
            return self._release(held, boundary)
        if len(held.pending) >= self.window:
            return self._release(held, len(held.pending) - min(self.tail, self.window // 2))
        return "", False

    def flush(self, index: Any) -> tuple[str, bool]:
        """Release everything held for ``index`` (its finish_reason came, or the stream ended)."""
        held = self._choices.setdefault(index, _Held())
        if held.blocked or not held.pending:
            return "", held.blocked
        return self._release(held, len(held.pending))

    def cut(self, index: Any) -> None:
        """Note that ``index``'s final chunk (``finish_reason: content_filter``) was sent."""
        self._choices.setdefault(index, _Held(blocked=True)).cut = True

    def is_cut(self, index: Any) -> bool:
        held = self._choices.get(index)
        return held is not None and held.cut

    def held(self) -> list[Any]:
        """The choices with text still held."""
        return [index for index, held in self._choices.items() if held.pending and not held.blocked]

    def seen(self) -> set[Any]:
        return set(self._choices)

    def blocked_any(self) -> bool:
        return any(held.blocked for held in self._choices.values())

    def released(self, index: Any) -> str:
        """All text released for ``index`` so far, as sent."""
        held = self._choices.get(index)
        return "" if held is None else held.sent

    @property
    def decision(self) -> Decision | None:
        return decide("output", self.findings, self.policy.output) if self.findings else None

    def _release(self, held: _Held, cut: int) -> tuple[str, bool]:
        actions = self.policy.output
        offset = len(held.context)
        text = held.context + held.pending
        cut += offset
        findings = verify_output(text, self.policy).findings
        new = [finding for finding in findings if finding.span[1] > offset]
        self.findings += new
        if any(actions.of(finding.category) == "block" for finding in new):
            held.blocked, held.pending = True, ""
            return "", True
        spans = self._redactions(text, findings, held.hidden)
        for finding in sorted(spans, key=lambda found: found.span[0]):
            if finding.span[0] < cut < finding.span[1]:
                cut = finding.span[1]
        released = [moved(finding, max(finding.span[0], offset) - offset, finding.span[1] - offset)
                    for finding in spans if finding.span[0] < cut and finding.span[1] > offset]
        out = redact(text[offset:cut], released)
        held.sent += out
        held.context = text[:cut][-self.tail:] if self.tail else ""
        start = cut - len(held.context)
        held.hidden = [moved(finding, max(finding.span[0], start) - start, finding.span[1] - start)
                       for finding in spans if finding.span[0] < cut and finding.span[1] > start]
        held.pending = text[cut:]
        return out, False

    def _redactions(self, text: str, findings: list[Finding], hidden: list[Finding]) -> list[Finding]:
        """The spans of ``text`` that ``Verdict.redacted`` replaces: the redactable ``findings`` and the ``hidden``
        spans of its context (released redacted: the context may start inside one, which then no longer matches),
        then what redacting them uncovers. A cut inside one of them would release part of it raw: the released
        part, screened alone, no longer shows it whole."""
        actions, screen = self.policy.output, screen_of(self.policy, "output")
        spans = hidden + [finding for finding in findings
                          if finding.kind is not None and actions.of(finding.category) == "redact"]
        return spans + screen.uncovered(text, spans)


def _last_boundary(text: str) -> int:
    """Where the text after its last sentence or line end starts (0: none)."""
    last = 0
    for match in _BOUNDARY.finditer(text):
        last = match.end()
    return last
