"""Database tables. API schemas live with the routes; these classes are storage only."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from moecloud.store.types import Money, UTCDateTime, utcnow


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    """``balance`` is what the tenant can still spend: credits minus settled usage minus open holds."""

    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    balance: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1)  # share of busy capacity against other tenants
    screening_policy: Mapped[str | None] = mapped_column(Text)  # moecloud.security.Policy as JSON; NULL: default
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """Only the sha256 of a key is kept; ``public_id`` names it in lists, logs and usage."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    models: Mapped[str | None] = mapped_column(Text)  # comma-separated scope; NULL: every model
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int | None] = mapped_column(Integer)  # admission tier, lower first; NULL: the default
    screening_policy: Mapped[str | None] = mapped_column(Text)  # replaces the tenant's policy; NULL: the tenant's
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Price(Base):
    """Per million tokens, per model."""

    __tablename__ = "prices"
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_miss: Mapped[Decimal] = mapped_column(Money)
    input_hit: Mapped[Decimal] = mapped_column(Money)
    output: Mapped[Decimal] = mapped_column(Money)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Deployment(Base):
    """Where ``model`` is served; several per model are ranked by priority.

    ``remote``: one OpenAI-compatible base URL (a worker run elsewhere, or an external provider whose key is
    read from the variable ``api_key_env``). ``local``: ``replicas`` engine workers of ``checkpoint`` that the
    gateway starts itself, autoscaled between ``min_replicas`` and ``max_replicas``, as worker processes or
    Ray Serve applications (``backend``).
    """

    __tablename__ = "deployments"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="remote")  # remote | local
    backend: Mapped[str] = mapped_column(String(16), default="process")  # local: process | ray
    base_url: Mapped[str | None] = mapped_column(Text)  # remote only
    checkpoint: Mapped[str | None] = mapped_column(Text)  # local only
    upstream_model: Mapped[str | None] = mapped_column(String(200))  # NULL: same as ``model``
    priority: Mapped[int] = mapped_column(Integer, default=0)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    replicas: Mapped[int] = mapped_column(Integer, default=1)  # wanted now (local)
    min_replicas: Mapped[int] = mapped_column(Integer, default=0)
    max_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)  # per replica; NULL: routing default
    api_key_env: Mapped[str | None] = mapped_column(String(200))
    cost_input: Mapped[Decimal | None] = mapped_column(Money)  # what serving costs us, per 1M tokens
    cost_output: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alias(Base):
    """A model name that routes to another model (``auto-core`` -> ``moecloud-demo-int8``); one hop only."""

    __tablename__ = "aliases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)  # why, e.g. the evaluation that chose it
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evaluation(Base):
    """A task suite run through the gateway against some models, billed to a tenant. running -> succeeded | failed.

    Its traffic uses a key minted for the run (``key_public_id``) and revoked when the run ends.
    """

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    spec: Mapped[str] = mapped_column(Text)  # the request, as JSON
    examples: Mapped[int] = mapped_column(Integer)
    key_public_id: Mapped[str] = mapped_column(String(32))
    results: Mapped[str | None] = mapped_column(Text)  # JSON: one row per model
    recommended: Mapped[str | None] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(200))  # the alias pointed at ``recommended``, if any
    error: Mapped[str | None] = mapped_column(Text)
    report: Mapped[str | None] = mapped_column(Text)  # HTML
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Hold(Base):
    """Worst-case cost reserved before a request is forwarded. held -> settled | released | expired.

    ``expires_at`` is pushed forward while the request runs; ``gateway`` names the gateway that placed it, so a
    restarted gateway releases the holds its previous run left behind (and no other gateway's).
    """

    __tablename__ = "holds"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    amount: Mapped[Decimal] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="held")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    gateway: Mapped[str | None] = mapped_column(String(100))
    __table_args__ = (Index("ix_holds_status_expires", "status", "expires_at"),)


class LedgerEntry(Base):
    """Every change to what a tenant owns: credits (+) and settled usage (-). Holds are not entries."""

    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # trial | credit | usage
    amount: Mapped[Decimal] = mapped_column(Money)
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecord(Base):
    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(200))
    deployment: Mapped[str | None] = mapped_column(String(100))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | cancelled
    cost: Mapped[Decimal] = mapped_column(Money)
    day: Mapped[str] = mapped_column(String(10))  # UTC YYYY-MM-DD, for portable grouping
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (
        UniqueConstraint("request_id", name="uq_usage_request_id"),
        Index("ix_usage_tenant_day", "tenant_id", "day"),
    )


class AuditEntry(Base):
    """Append-only; ``digest`` = HMAC(audit key, prev_digest + canonical row), so edits break the chain."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_digest: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))


class AuditAnchor(Base):
    """Where the audit chain starts after old rows were purged: the last purged row's id and digest, signed
    (``digest`` = HMAC(audit key, canonical anchor)) so that a forged anchor does not verify. One row at most."""

    __tablename__ = "audit_anchor"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    through_id: Mapped[int] = mapped_column(Integer)
    through_digest: Mapped[str] = mapped_column(String(64))
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    digest: Mapped[str] = mapped_column(String(64))


class UsageDaily(Base):
    """``usage`` summed per (UTC day, tenant, key, model), kept in step with it in the transaction that writes each
    usage record (``ledger.finish_request``), so that the console's charts read thousands of rows, not millions."""

    __tablename__ = "usage_daily"
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    __table_args__ = (Index("ix_usage_daily_tenant_day", "tenant_id", "day"),)


class ConsoleSession(Base):
    """A console sign-in. Only the sha256 of the cookie's token is kept; ``csrf_token`` is what the page sends back
    in ``X-CSRF-Token`` with every request that changes something. ``key_id`` is NULL for an admin session."""

    __tablename__ = "console_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # admin | tenant
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
