"""Evaluations started from the admin API: `moecloud eval` run by the gateway, in a background thread.

The run is the toolkit's own (``toolkit.evaluate``): the suite goes through this gateway's OpenAI API with a
key minted for the tenant, scoped to the evaluated models and revoked when the run ends, so its requests
are metered and billed like any other. The thread only makes HTTP requests to the gateway and store
writes, never touching the event loop, so the gateway keeps serving (the run's own requests included).
Runs are kept in the store; one left running by a gateway that stopped is failed at the next start.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from moecloud.gateway.admin.schemas import AliasIn, EvaluationIn, EvaluationOut, KeyIn, NewKeyOut
from moecloud.gateway.admin.service import Admin
from moecloud.gateway.errors import InvalidRequest, ResourceNotFound
from moecloud.gateway.fleet.catalog import Catalog
from moecloud.gateway.tenancy.auth import Authenticator
from moecloud.pricing import PriceSheet
from moecloud.store import Database, evaluations, tenants
from moecloud.store.errors import StoreError
from moecloud.store.tables import Evaluation
from moecloud.store.types import utcnow
from moecloud.toolkit.evaluate import alias_name, alias_note, evaluate, recommend
from moecloud.toolkit.report import html_report
from moecloud.toolkit.tasks import Example, load_suite, select, suite_name

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted by a restart"


@dataclass(frozen=True)
class Gateway:
    """What a run needs of the gateway it runs in: its store, and the caches its key and alias changes touch."""

    database: Database
    authenticator: Authenticator
    catalog: Catalog


def start_evaluation(
    state: Gateway, admin: Admin, spec: EvaluationIn, prices: dict[str, PriceSheet], root_url: str
) -> EvaluationOut:
    """Check the suite, mint the run's key, record the run and start it; ``root_url`` is this gateway's root.

    ``prices``: what each model costs the tenant (the gateway's own price table), for the cost per 1k requests.
    """
    examples = _examples(spec)
    public_id = "eval_" + secrets.token_hex(6)
    # The key's own rate limit admits the whole run at once: only the tenant's limits bind its traffic.
    key = admin.create_key(KeyIn(tenant=spec.tenant, name=f"evaluation {public_id}", models=spec.models,
                                 rpm=len(examples) * len(spec.models), max_concurrency=spec.concurrency))
    with state.database.write() as session:
        evaluation = evaluations.add_evaluation(session, Evaluation(
            public_id=public_id, tenant_id=tenants.get_tenant(session, spec.tenant).id, status="running",
            spec=spec.model_dump_json(), examples=len(examples), key_public_id=key.id,
        ))
    base_url = root_url.rstrip("/") + "/v1"
    threading.Thread(target=_run, args=(state, admin, public_id, spec, examples, prices, base_url, key),
                     name=f"evaluation-{public_id}", daemon=True).start()
    return evaluation_out(evaluation)


def list_evaluations(database: Database, limit: int) -> list[EvaluationOut]:
    """Newest first."""
    with database.read() as session:
        return [evaluation_out(e) for e in evaluations.list_evaluations(session, limit=limit)]


def get_evaluation(database: Database, public_id: str) -> EvaluationOut:
    with database.read() as session:
        return evaluation_out(evaluations.get_evaluation(session, public_id))


def evaluation_report(database: Database, public_id: str) -> str:
    """The run's HTML report; a 404 while it runs, or when it failed before scoring every model."""
    with database.read() as session:
        evaluation = evaluations.get_evaluation(session, public_id)
    if evaluation.report is None:
        raise ResourceNotFound(f"evaluation {public_id!r} has no report: it is {evaluation.status}")
    return evaluation.report


def fail_interrupted(database: Database, admin: Admin) -> int:
    """At start-up: runs left running by a gateway that stopped are failed, and their keys revoked."""
    with database.write() as session:
        stale = [e.key_public_id for e in evaluations.fail_running(session, INTERRUPTED, now=utcnow())]
    for key in stale:
        admin.revoke_key(key)
    return len(stale)


def evaluation_out(evaluation: Evaluation) -> EvaluationOut:
    return EvaluationOut.model_validate({
        **json.loads(evaluation.spec), "id": evaluation.public_id, "status": evaluation.status,
        "examples": evaluation.examples, "key": evaluation.key_public_id,
        "results": json.loads(evaluation.results or "[]"), "recommended": evaluation.recommended,
        "alias": evaluation.alias, "error": evaluation.error, "created_at": evaluation.created_at,
        "finished_at": evaluation.finished_at,
    })


def _examples(spec: EvaluationIn) -> list[Example]:
    try:
        suite = load_suite(spec.suite)
    except (OSError, ValueError, TypeError) as error:
        raise InvalidRequest(f"cannot read the suite {spec.suite!r}: {error}", param="suite") from error
    examples = select(suite, split=spec.split)[:spec.limit]
    if not examples:
        raise InvalidRequest(f"the suite {spec.suite!r} has no {spec.split!r} examples", param="split")
    return examples


def _run(state: Gateway, admin: Admin, public_id: str, spec: EvaluationIn, examples: list[Example],
         prices: dict[str, PriceSheet], base_url: str, key: NewKeyOut) -> None:
    try:
        try:
            outcome = _evaluate(state, admin, spec, examples, prices, base_url, key.key)
        finally:
            admin.revoke_key(key.id)  # before the outcome is recorded: a finished run holds no live key
            state.authenticator.forget()
    except Exception as error:  # the run's failure is its result, reported by GET /admin/evaluations/{id}
        log.exception("evaluation %s failed", public_id)
        outcome = {"error": f"{type(error).__name__}: {error}"}
    with state.database.write() as session:
        evaluations.finish_evaluation(session, public_id, now=utcnow(), **outcome)


def _evaluate(state: Gateway, admin: Admin, spec: EvaluationIn, examples: list[Example],
              prices: dict[str, PriceSheet], base_url: str, api_key: str) -> dict[str, Any]:
    results = evaluate(base_url, api_key, spec.models, examples, prices, state.catalog.default_price(),
                       spec.concurrency, spec.max_tokens)
    chosen = recommend(results, spec.min_accuracy)
    suite = suite_name(spec.suite)
    outcome: dict[str, Any] = {
        "results": json.dumps([r.row() for r in results]), "recommended": chosen.model if chosen else None,
        "report": html_report(suite, results, spec.min_accuracy, chosen),
    }
    if all(r.errors == r.requests for r in results):  # e.g. the gateway is not reachable at that URL, or no credit
        outcome["error"] = f"every request failed (the run called the gateway at {base_url})"
    elif spec.register_alias and chosen is not None:
        name = alias_name(suite)
        try:
            outcome["alias"] = admin.set_alias(name, AliasIn(model=chosen.model,
                                                             note=alias_note(suite, chosen, spec.min_accuracy))).name
        except StoreError as error:  # e.g. the choice is itself an alias: the results stand, the run failed
            outcome["error"] = f"could not register {name}: {error}"
        state.catalog.forget()
    return outcome
