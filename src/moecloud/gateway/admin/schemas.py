"""Admin and usage API shapes (kept apart from the tables). The CLI prints the same objects."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from moecloud.gateway.fleet.catalog import check_provider_url
from moecloud.gateway.fleet.provider_keys import PROVIDER_KEY_VARIABLE
from moecloud.security import Policy

# Every integer is bounded: the store keeps them in 32-bit columns (PostgreSQL's integer; larger values
# overflow SQLite too), and a bound with a meaning is tighter still.
MAX_INT32 = 2**31 - 1
Rate = Annotated[int, Field(ge=1, le=MAX_INT32)]  # requests or tokens per minute
Weight = Annotated[int, Field(ge=1, le=1_000_000)]
Concurrency = Annotated[int, Field(ge=1, le=1_000_000)]
Replicas = Annotated[int, Field(ge=0, le=1000)]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    return False


class StoredIn(BaseModel):
    """An input whose strings are stored: PostgreSQL's text refuses a NUL character (SQLite keeps it), so both
    stores refuse it here, as a 400 naming the field, instead of a database error."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("must not contain a NUL character (\\u0000)")
        return value


class TenantIn(StoredIn):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    rpm: Rate | None = None
    tpm: Rate | None = None
    trial_credit: Decimal | None = Field(
        None, ge=0, max_digits=18, decimal_places=9, description="default: billing.trial_credit"
    )
    weight: Weight = Field(1, description="share of busy capacity against other tenants")


class TenantLimitsIn(StoredIn):
    """A partial update: fields left out stay as they are; null puts rpm/tpm back to the gateway default."""

    rpm: Rate | None = None
    tpm: Rate | None = None
    weight: Weight = Field(1, description="share of busy capacity against other tenants")


class TenantOut(BaseModel):
    name: str
    balance: Decimal
    rpm: int | None
    tpm: int | None
    weight: int
    created_at: datetime


class KeyIn(StoredIn):
    tenant: str
    name: str = Field(min_length=1, max_length=100)
    models: list[str] | None = Field(None, description="models the key may use; default: all")
    rpm: Rate | None = None
    tpm: Rate | None = None
    max_concurrency: Concurrency | None = None
    priority: int | None = Field(None, ge=0, le=1_000_000,
                                 description="admission tier, lower first; default: admission setting")
    expires_at: datetime | None = None


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    priority: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class KeyLimitsIn(StoredIn):
    """A partial update of a key's limits: fields left out stay as they are; null means the default."""

    rpm: Rate | None = None
    tpm: Rate | None = None
    max_concurrency: Concurrency | None = None
    priority: int | None = Field(None, ge=0, le=1_000_000)


class TenantDeletedOut(TenantOut):
    removed: dict[str, Any] = Field(description="what went with it: rows per table, balance, usage cost")


class NewKeyOut(KeyOut):
    key: str = Field(description="the secret; shown this once and never again")


class CreditIn(StoredIn):
    tenant: str
    amount: Decimal = Field(gt=0, max_digits=18, decimal_places=9)
    note: str | None = Field(None, max_length=500)


class LedgerEntryOut(BaseModel):
    kind: str
    amount: Decimal
    request_id: str | None
    note: str | None
    created_at: datetime


class BalanceOut(BaseModel):
    tenant: str
    balance: Decimal = Field(description="available now: credits - usage - open holds")
    held: Decimal = Field(description="reserved by requests in flight")
    currency: str
    entries: list[LedgerEntryOut] = Field(description="newest first")


class PriceIn(StoredIn):
    input_miss: Decimal = Field(ge=0, max_digits=18, decimal_places=9, description="per 1M input tokens")
    input_hit: Decimal = Field(ge=0, max_digits=18, decimal_places=9, description="per 1M cached input tokens")
    output: Decimal = Field(ge=0, max_digits=18, decimal_places=9, description="per 1M output tokens")


class PriceOut(PriceIn):
    model: str


class DeploymentFields(StoredIn):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str = Field(min_length=1, max_length=200)
    kind: Literal["remote", "local"] = Field("remote", description="a base URL, or workers the gateway runs")
    base_url: str | None = Field(None, max_length=2000, description="remote: e.g. https://h/v1 (http: private "
                                                                    "hosts only)")
    checkpoint: str | None = Field(None, max_length=4096,
                                   description="local: the checkpoint directory the workers load")
    backend: Literal["process", "ray"] = Field("process", description="local: worker processes or Ray Serve")
    upstream_model: str | None = Field(None, description="the name the upstream knows; default: model")
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="lower is tried first")
    weight: Weight = 1
    replicas: Replicas = Field(1, description="local: replicas wanted now")
    min_replicas: Replicas = 0
    max_replicas: Replicas | None = Field(None, description="default: replicas")
    max_concurrency: Concurrency | None = Field(None, description="in-flight requests per replica")
    api_key_env: str | None = Field(None, max_length=200,
                                    description="the provider's key: MOECLOUD_PROVIDER_KEY_<NAME>, set in the "
                                                "gateway's environment or kept in <home>/secrets/providers/<NAME>")
    cost_input: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=9, description="our cost per 1M in")
    cost_output: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=9, description="per 1M out")


class DeploymentIn(DeploymentFields):
    """What the API accepts; rows stored before a rule was added are still listed (``DeploymentOut``)."""

    @field_validator("base_url")
    @classmethod
    def _provider_url(cls, url: str | None) -> str | None:
        return None if url is None else check_provider_url(url)

    @field_validator("api_key_env")
    @classmethod
    def _provider_key(cls, variable: str | None) -> str | None:
        if variable is not None and not PROVIDER_KEY_VARIABLE.fullmatch(variable):
            raise ValueError("must be MOECLOUD_PROVIDER_KEY_<NAME> (letters, digits, _): provider keys come only "
                             "from those variables or <home>/secrets/providers/<NAME>, never other settings")
        return variable

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentIn:
        if self.kind == "remote" and not self.base_url:
            raise ValueError("a remote deployment needs base_url")
        if self.kind == "local" and not self.checkpoint:
            raise ValueError("a local deployment needs checkpoint")
        if self.kind == "remote" and self.backend != "process":
            raise ValueError("only a local deployment has a backend")
        self.max_replicas = max(self.replicas, 1) if self.max_replicas is None else self.max_replicas
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("replicas must lie between min_replicas and max_replicas")
        return self


class AliasIn(StoredIn):
    model: str = Field(min_length=1, max_length=200, description="the deployed model the alias routes to")
    note: str | None = Field(None, max_length=2000, description="why, e.g. the evaluation that chose it")


class AliasOut(AliasIn):
    name: str
    updated_at: datetime


class ScaleEventOut(BaseModel):
    at: datetime
    replicas_from: int
    replicas_to: int
    reason: str


class DeploymentOut(DeploymentFields):
    created_at: datetime
    ready_replicas: int | None = Field(None, description="local: replicas serving now (gateway API only)")
    scale_events: list[ScaleEventOut] = Field(default_factory=list, description="newest first (gateway API only)")


class ScaleIn(StoredIn):
    replicas: Replicas
    min_replicas: Replicas | None = Field(None, description="default: unchanged")
    max_replicas: Replicas | None = Field(None, description="default: unchanged")


class UsageRowOut(BaseModel):
    day: str
    tenant: str
    key: str
    model: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost: Decimal


class UsageOut(BaseModel):
    object: str = "list"
    data: list[UsageRowOut]


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: str


class AuditVerifyOut(BaseModel):
    ok: bool
    rows: int
    problems: list[str]


class EvaluationIn(StoredIn):
    """`moecloud eval` as a request: the suite runs through this gateway as ``tenant``'s billed traffic."""

    models: list[str] = Field(min_length=1, max_length=20, description="deployed models (or aliases) to compare")
    suite: str = Field("core", min_length=1, max_length=4096,
                       description="'core' or a JSONL file on the gateway, under gateway.admin_path_roots")
    split: Literal["train", "val", "test"] = "test"
    limit: int | None = Field(None, ge=1, le=1_000_000, description="only the first N examples")
    min_accuracy: float = Field(0.9, ge=0, le=1, description="the bar for the recommendation")
    register_alias: bool = Field(False, description="route auto-<suite> to the recommendation")
    tenant: str = Field(description="whose traffic the evaluation is: metered and billed to this tenant")
    concurrency: int = Field(8, ge=1, le=64, description="requests in flight per model")
    max_tokens: int = Field(32, ge=1, le=4096, description="per answer")

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models) or not all(models):
            raise ValueError("models must be distinct, non-empty names")
        return models


class EvaluationOut(EvaluationIn):
    id: str
    status: Literal["running", "succeeded", "failed"]
    examples: int = Field(description="examples run against each model")
    key: str = Field(description="id of the key minted for the run's traffic, revoked when it ends")
    results: list[dict[str, Any]] = Field(description="one row per model: accuracy, latency, cost, ...")
    recommended: str | None = Field(description="the cheapest model meeting min_accuracy; null: none does")
    alias: str | None = Field(description="the alias pointed at the recommendation (register_alias)")
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class CountOut(BaseModel):
    count: int


class PolicyOut(BaseModel):
    """A tenant's or key's screening policy: what is stored (null: it inherits) and what its requests get
    (a key: its own, else its tenant's, else the gateway default; a tenant: its own, else the default)."""

    tenant: str
    key: str | None = None
    stored: Policy | None
    effective: Policy
