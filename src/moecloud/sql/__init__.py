"""Deployed models as DuckDB functions over table rows, through the gateway's OpenAI API (so every row is
authenticated, metered and billed): ``moe_complete``, ``moe_chat``, ``moe_classify``, ``moe_extract``,
``moe_score`` and their ``try_`` variants (NULL instead of failing the query).

``Functions.sql``/``execute`` run a SELECT in passes: a collecting pass sees every row's request without
sending it, the distinct new requests are priced against ``max_cost`` (the worst case, before anything is
sent) and sent concurrently, and the last pass reads the answers in row order. Queries run straight on the
connection (or statements other than SELECT) still work, one request per distinct row at a time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import jsonschema
from rich.console import Console
from rich.progress import Progress

from moecloud.config import BillingSettings, load_settings
from moecloud.pricing import PriceSheet, TokenUsage, measure_prompt
from moecloud.secret_files import SecretFiles, read_secret
from moecloud.sql.client import Call, Cancelled, Outcome, Sender
from moecloud.sql.requests import (
    chat_body,
    classify_body,
    content,
    extract_body,
    parse_json,
    preview,
    read_extracted,
    read_label,
    read_score,
    score_body,
)
from moecloud.toolkit.evaluate import fetch_prices

__all__ = ["Cancelled", "CostLimitExceeded", "Functions", "RowError", "connect", "default_target", "register"]

MAX_PASSES = 8  # nested calls need one collecting pass per level; beyond this, rows are sent one at a time
PROGRESS_ROWS = 20  # a terminal shows a progress bar from this many requests on


class RowError(ValueError):
    """One row's request failed: names the function, the row and the reason."""


class CostLimitExceeded(RuntimeError):
    """The query's worst-case cost is over ``max_cost``; nothing was sent."""


def default_target() -> tuple[str, str | None]:
    """The local `moecloud serve`: its API base URL and the default tenant's key it keeps under <home>/secrets."""
    settings = load_settings()
    return settings.gateway.own_url() + "/v1", read_secret(SecretFiles.of(settings).default_api_key)


class Functions:
    """The functions registered on one DuckDB connection, their answer cache and what they cost so far.
    Attributes it lacks are the connection's (``functions.close()``, ``functions.table(...)``)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, base_url: str | None = None, api_key: str | None = None,
                 *, max_concurrency: int = 16, requests_per_second: float | None = None,
                 max_cost: Decimal | float | str | None = None, progress: bool | None = None,
                 timeout: float = 300.0, **defaults: Any) -> None:
        local_url, local_key = default_target() if base_url is None or api_key is None else (None, None)
        self.conn = conn
        self.base_url = (base_url or local_url or "").rstrip("/")
        self.sender = Sender(self.base_url, api_key or local_key or "", max_concurrency=max_concurrency,
                             requests_per_second=requests_per_second, timeout=timeout)
        self.max_cost = None if max_cost is None else Decimal(str(max_cost))
        self.progress, self.defaults = progress, defaults
        self.billing: BillingSettings = load_settings().billing
        self.cost, self.requests = Decimal(0), 0
        self._api_key = api_key or local_key or ""
        self._prices: dict[str, PriceSheet] | None = None
        self._cache: dict[tuple[str, str], Outcome] = {}
        self._pending: dict[tuple[str, str], Call] = {}
        self._collecting = False
        self._rows: dict[str, int] = {}  # rows each function has met in this pass
        self._first_row: dict[tuple[str, str], int] = {}  # each input's first row in this query
        self._lock = threading.RLock()
        self._register()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    # running queries

    def sql(self, query: str, params: Any = None) -> duckdb.DuckDBPyRelation:
        """``conn.sql(query)`` with the rows' requests sent concurrently first (and priced, with ``max_cost``)."""
        self.prefetch(query, params)
        self._rows.clear()
        return self.conn.sql(query, params=params)

    def execute(self, query: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        """``conn.execute(query)``, prefetched as ``sql`` is."""
        self.prefetch(query, params)
        self._rows.clear()
        return self.conn.execute(query, params)

    def prefetch(self, query: str, params: Any = None) -> None:
        """Send what a SELECT's rows ask of the models, concurrently, so that running it reads the answers.
        Raises ``CostLimitExceeded`` (nothing sent) when the worst case is over ``max_cost``."""
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v.error is None}  # a new query retries failures
            self._rows.clear()
            self._first_row.clear()
            self._pending.clear()  # what a failed query had noted
        statements = self.conn.extract_statements(query)
        if not statements or any(s.type != duckdb.StatementType.SELECT for s in statements):
            return
        for _ in range(MAX_PASSES):
            self._rows.clear()  # each pass counts the rows each function meets from 1
            self._collecting = True
            try:
                result = self.conn.execute(query, params)
                while result.fetchmany(10_000):  # every row computed, none kept
                    pass
            finally:
                self._collecting = False
            with self._lock:
                calls, self._pending = self._pending, {}
            if not calls:
                return
            self._check_cost(calls)
            self._send(calls)

    def worst_case(self, call: Call) -> Decimal:
        """The most ``call`` can cost: its prompt's bytes as tokens (the gateway's hold estimate) at the miss
        price, and all of its ``max_tokens`` at the output price."""
        prompt = measure_prompt(call.body).tokens(self.billing.hold_bytes_per_token,
                                                  self.billing.message_overhead_tokens)
        max_tokens = call.body.get("max_tokens", self.billing.default_max_tokens)
        return self.price(call.model).worst_case(prompt, max_tokens * int(call.body.get("n") or 1))

    def price(self, model: str) -> PriceSheet:
        """The gateway's price for ``model`` to this key (``GET /v1/prices``), else the billing defaults."""
        if self._prices is None:
            try:
                self._prices = fetch_prices(self.base_url, self._api_key) or {}
            except Exception:  # a wrong key or no gateway: its requests say why, row by row
                self._prices = {}
        return self._prices.get(model) or PriceSheet.default(self.billing)

    def cancel(self) -> None:
        """Cancel the requests in flight (from another thread); the query raises ``Cancelled``."""
        self.sender.cancel()

    def clear(self) -> None:
        """Forget the answers kept: the same rows are asked again."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        self.sender.close()
        self.conn.close()

    def __enter__(self) -> Functions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # sending

    def _check_cost(self, calls: dict[tuple[str, str], Call]) -> None:
        if self.max_cost is None:
            return
        worst = sum((self.worst_case(call) for call in calls.values()), Decimal(0))
        if self.cost + worst > self.max_cost:
            raise CostLimitExceeded(
                f"the worst case of {len(calls)} distinct requests is {worst} (spent so far: {self.cost}), "
                f"over max_cost {self.max_cost}: nothing was sent")

    def _send(self, calls: dict[tuple[str, str], Call]) -> None:
        keys, batch = list(calls), list(calls.values())
        console = Console(stderr=True)
        show = self.progress if self.progress is not None else console.is_terminal and len(batch) >= PROGRESS_ROWS
        if show:
            with Progress(console=console, transient=console.is_terminal) as bar:  # a log keeps the last state
                task = bar.add_task("moecloud", total=len(batch))
                outcomes = self.sender.send(batch, lambda: bar.advance(task))
        else:
            outcomes = self.sender.send(batch)
        with self._lock:
            for key, call, outcome in zip(keys, batch, outcomes, strict=True):
                self._cache[key] = outcome
                usage = TokenUsage.from_openai(outcome.usage)
                if usage is not None:
                    self.cost += self.price(call.model).cost(usage)
                    self.requests += 1

    def _answer(self, name: str, call: Call | None, shown: str) -> Any:
        """A row's answer: from the cache, else (collecting) None with the call noted, else sent now."""
        if call is None:
            return None
        key = (call.path, json.dumps(call.body, sort_keys=True, ensure_ascii=False))
        with self._lock:
            self._rows[name] = row = self._rows.get(name, 0) + 1
            row = self._first_row.setdefault(key, row)  # the first row with this input names it
            outcome = self._cache.get(key)
            if self._collecting:
                if outcome is None:
                    self._pending.setdefault(key, call)
                return None
        if outcome is None:
            self._check_cost({key: call})
            self._send({key: call})
            outcome = self._cache[key]
        if outcome.error is not None:
            raise RowError(f"{name}: row {row} ({shown}): {outcome.error}")
        return outcome.value

    # the functions

    def _register(self) -> None:
        chat = self._chat_body
        specs: list[tuple[str, list[str], str, Callable[..., Call | None], int]] = [
            ("moe_complete", ["VARCHAR", "VARCHAR", "VARCHAR"], "VARCHAR",
             lambda m, p, o: chat(m, [{"role": "user", "content": p}], o), 2),
            ("moe_chat", ["VARCHAR", "VARCHAR", "VARCHAR"], "VARCHAR",
             lambda m, messages, o: chat(m, parse_json(messages, list, "messages"), o), 2),
            ("moe_classify", ["VARCHAR", "VARCHAR", "VARCHAR[]"], "VARCHAR", self._classify, 3),
            ("moe_extract", ["VARCHAR", "VARCHAR", "VARCHAR"], "JSON", self._extract, 3),
            ("moe_score", ["VARCHAR", "VARCHAR", "VARCHAR"], "DOUBLE", self._score, 3),
        ]
        for name, parameters, returns, build, required in specs:
            for prefix in ("", "try_"):
                self._udf(prefix + name, name, build, parameters, returns, required, failing=not prefix)

    def _udf(self, name: str, base: str, build: Callable[..., Call | None], parameters: list[str], returns: str,
             required: int, *, failing: bool) -> None:
        def function(first: Any, second: Any, third: Any) -> Any:  # DuckDB counts the parameters
            args = (first, second, third)
            if any(a is None for a in args[:required]):
                return None
            shown = preview(args[1])
            try:
                return self._answer(base, build(*args), shown)
            except (RowError, ValueError) as error:
                if failing:
                    raise error if isinstance(error, RowError) else RowError(f"{base}: {shown}: {error}") from None
                return None

        internal = f"__moecloud_{name}"
        self.conn.create_function(internal, function, parameters, duckdb.sqltype(returns), null_handling="special")
        given = [f"a{i}" for i in range(required)]
        forms = [f"({', '.join(given)}) AS {internal}({', '.join(given + ['NULL'] * (3 - required))})"]
        if required < 3:
            forms.append(f"({', '.join(given + ['a2'])}) AS {internal}({', '.join(given + ['a2'])})")
        self.conn.execute(f"CREATE OR REPLACE TEMP MACRO {name} {', '.join(forms)}")

    def _chat_body(self, model: str, messages: list[Any], options: str | None) -> Call:
        given = parse_json(options, dict, "options") if options is not None else {}
        return Call("chat/completions", chat_body(model, messages, given, self.defaults), content)

    def _classify(self, model: str, text: str, labels: list[str | None]) -> Call:
        body = classify_body(model, text, labels, self.defaults)
        return Call("chat/completions", body, lambda data: read_label(data, body))

    def _extract(self, model: str, text: str, schema_text: str) -> Call:
        schema = parse_json(schema_text, dict, "json_schema")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"json_schema: {error.message}") from None

        def read(data: dict[str, Any]) -> str:
            value = read_extracted(data)
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as error:
                raise ValueError(f"the answer does not match the schema: {error.message}") from None
            return json.dumps(value, ensure_ascii=False)

        return Call("chat/completions", extract_body(model, text, schema, self.defaults), read)

    def _score(self, model: str, prompt: str, continuation: str) -> Call:
        return Call("completions", score_body(model, prompt, continuation), lambda data: read_score(data, continuation))


def register(conn: duckdb.DuckDBPyConnection, base_url: str | None = None, api_key: str | None = None,
             **options: Any) -> Functions:
    """Register the functions on ``conn``. ``base_url``/``api_key`` default to the local `moecloud serve`.
    Options: ``max_concurrency`` (16), ``requests_per_second`` per model, ``max_cost``, ``progress``,
    ``timeout``; any other (``max_tokens``, ``temperature``, ...) is a default of every request."""
    return Functions(conn, base_url, api_key, **options)


def connect(database: str = ":memory:", base_url: str | None = None, api_key: str | None = None,
            **options: Any) -> Functions:
    """A new DuckDB connection with the functions registered (``Functions`` passes on the connection's own
    methods; its ``sql``/``execute`` prefetch)."""
    return register(duckdb.connect(database), base_url, api_key, **options)
