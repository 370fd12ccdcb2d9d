"""What can be served and what it costs: deployments (upstreams), aliases and per-model prices."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from moecloud.store.errors import AlreadyExists, InvalidValue, found
from moecloud.store.tables import Alias, Deployment, Price
from moecloud.store.types import utcnow


def set_price(session: Session, model: str, *, input_miss: Decimal, input_hit: Decimal, output: Decimal) -> Price:
    price = session.get(Price, model)
    if price is None:
        price = Price(model=model, input_miss=input_miss, input_hit=input_hit, output=output)
        session.add(price)
    else:
        price.input_miss, price.input_hit, price.output = input_miss, input_hit, output
        price.updated_at = utcnow()
    session.flush()
    return price


def delete_price(session: Session, model: str) -> Price:
    """The model is priced at the billing defaults again."""
    price = found(session.get(Price, model), "price", model)
    session.delete(price)
    session.flush()
    return price


def list_prices(session: Session) -> list[Price]:
    return list(session.scalars(select(Price).order_by(Price.model)))


def add_deployment(session: Session, deployment: Deployment) -> Deployment:
    if session.get(Deployment, deployment.name) is not None:
        raise AlreadyExists("deployment", deployment.name)
    if session.get(Alias, deployment.model) is not None:
        raise InvalidValue(f"{deployment.model!r} is an alias; delete the alias before deploying a model of that name")
    session.add(deployment)
    session.flush()
    return deployment


def remove_deployment(session: Session, name: str) -> Deployment:
    deployment = found(session.get(Deployment, name), "deployment", name)
    session.delete(deployment)
    return deployment


def scale_deployment(
    session: Session, name: str, replicas: int, *, min_replicas: int | None = None, max_replicas: int | None = None
) -> tuple[Deployment, int]:
    """Set a local deployment's wanted replicas (and bounds); returns it and the count it had."""
    deployment = found(session.get(Deployment, name), "deployment", name)
    low = deployment.min_replicas if min_replicas is None else min_replicas
    high = deployment.max_replicas if max_replicas is None else max_replicas
    if deployment.kind != "local":
        raise InvalidValue(f"deployment {name!r} is remote: only local deployments have replicas")
    if not low <= replicas <= high:
        raise InvalidValue(f"replicas must lie between min_replicas ({low}) and max_replicas ({high})")
    before = deployment.replicas
    deployment.replicas, deployment.min_replicas, deployment.max_replicas = replicas, low, high
    session.flush()
    return deployment, before


def list_deployments(session: Session) -> list[Deployment]:
    """Ordered as the router tries them: by model, then priority (lower first), then name."""
    query = select(Deployment).order_by(Deployment.model, Deployment.priority, Deployment.name)
    return list(session.scalars(query))


def set_alias(session: Session, name: str, model: str, *, note: str | None = None) -> tuple[Alias, str | None]:
    """Point ``name`` at ``model`` (created or moved); returns the alias and the model it pointed at before.

    The target must be a deployed model, not an alias (one hop), and the name must not be a deployed model.
    """
    served = set(session.scalars(select(Deployment.model).distinct()))
    if name in served:
        raise InvalidValue(f"{name!r} is a deployed model; an alias cannot shadow it")
    if model not in served:
        raise InvalidValue(f"the model {model!r} has no deployment; an alias must point at a served model")
    alias = session.get(Alias, name)
    before = alias.model if alias else None
    if alias is None:
        alias = Alias(name=name, model=model, note=note)
        session.add(alias)
    else:
        alias.model, alias.note, alias.updated_at = model, note, utcnow()
    session.flush()
    return alias, before


def remove_alias(session: Session, name: str) -> Alias:
    alias = found(session.get(Alias, name), "alias", name)
    session.delete(alias)
    return alias


def list_aliases(session: Session) -> list[Alias]:
    return list(session.scalars(select(Alias).order_by(Alias.name)))
