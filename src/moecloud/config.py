"""The one settings object. This module is the only reader of the environment (prefix ``MOECLOUD_``).

Nested sections read ``MOECLOUD_<SECTION>__<FIELD>``, e.g. ``MOECLOUD_ENGINE__DTYPE=bfloat16``.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROVIDER_KEY_PREFIX = "MOECLOUD_PROVIDER_KEY_"


class EngineSettings(BaseModel):
    dtype: str = Field("auto", description="float32 | bfloat16 | float16 | auto (bf16 on cuda, fp32 on cpu)")
    device: str = Field("auto", description="cpu | cuda | auto")
    quantization: str | None = Field(None, description="None or 'int8' (weight-only)")
    fp8_compute: str = Field(
        "auto", description="FP8 block-scaled checkpoints: on = keep weights in FP8 and multiply in FP8 (needs sm90), "
                            "off = dequantize to dtype at load, auto = on where the GPU supports it"
    )
    block_size: int = Field(16, ge=1, description="tokens per paged KV block")
    kv_cache_tokens: int | None = Field(
        None, ge=16, description="latent KV cache capacity, in tokens; default: sized from memory after the weights "
        "(on CUDA the free device memory times memory_utilization, less one full step's activations; on CPU the "
        "available host memory times memory_utilization, capped at 65536 tokens)"
    )
    memory_utilization: float = Field(
        0.9, gt=0, le=1, description="fraction of the device's memory the engine may use (weights, activations and "
                                     "the KV cache), as vLLM's gpu_memory_utilization; only read to size the KV cache"
    )
    max_num_seqs: int = Field(64, ge=1, description="most sequences in one engine step")
    max_num_batched_tokens: int = Field(2048, ge=16, description="token budget of one engine step")
    max_model_len: int | None = Field(None, description="context cap; default: the model's own")
    enable_prefix_caching: bool = True
    compile: bool = Field(
        True,
        description="run decode steps through torch.compile (inductor): on 2 CPU cores ~3x faster at batch 1, "
        "~2x at batch 16 (benchmarks/RESULTS.md); the first start on a machine compiles (1-2 minutes on 2 cores), "
        "later starts load the compiled kernels from compile_cache_dir (seconds); false: eager only",
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="where inductor keeps compiled graphs and kernels across processes; in the settings "
        "default <home>/compile-cache; None (e.g. LLM(path)): torch's own default, /tmp/torchinductor_<user>",
    )
    compile_max_batch: int = Field(
        32, ge=1, description="decode steps with more sequences stay eager (per-expert GEMMs win there)"
    )
    cuda_graphs: bool = Field(
        True, description="on CUDA, replay decode-only steps from CUDA graphs captured at warm-up (no effect on CPU)"
    )
    cuda_graph_max_batch: int = Field(
        64, ge=1, description="graphs are captured for batches of 1, 2, 4, ... up to this (and max_num_seqs); a "
                              "decode step is padded to the next captured size, larger ones run eagerly"
    )
    cuda_graph_max_context: int = Field(
        8192, ge=16, description="graphs attend over block tables of power-of-two widths up to this many tokens; a "
                                 "decode step with a longer context runs eagerly"
    )
    server_threads: int | None = Field(
        None, ge=1, description="CPU threads for a worker's math; default: all cores but one, left to the event loop"
    )
    max_waiting_requests: int = Field(1024, ge=1, description="queue bound before the server answers 429")
    max_consecutive_failures: int = Field(
        10, ge=1, description="requests failed in a row with no token between them: then the engine counts as broken"
    )
    structured_cache_size: int = Field(256, ge=1, description="compiled structured-output grammars kept, by spec")
    structured_lexer_fuel: int = Field(
        100_000, ge=1000, description="llguidance's budget for building a grammar's lexer: a regex or schema that "
                                      "needs more is refused (400) instead of stalling the engine's step"
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="ranks that split attention heads, dense MLPs and the vocabulary (one engine over "
                             "tensor_parallel_size x expert_parallel_size processes, one device each on CUDA)"
    )
    expert_parallel_size: int = Field(1, ge=1, description="ranks that split the routed experts between them")
    parallel_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend of the ranks' data collectives; auto: nccl on cuda, gloo on "
                            "cpu (the step plan always travels over gloo)"
    )
    parallel_launcher: Literal["process", "ray"] = Field(
        "process", description="process: ranks 1.. are child processes of rank 0 (one machine); ray: Ray actors "
                               "placed by a placement group (the ray extra; joins the running Ray, else starts one)"
    )
    parallel_master_addr: str = Field(
        "127.0.0.1", description="where rank 0's rendezvous store is reached (launcher ray: this node's Ray address)"
    )
    parallel_port: int = Field(0, ge=0, le=65535, description="the rendezvous store's port; 0: a free port")
    parallel_timeout_seconds: float = Field(
        300.0, gt=0, description="longest wait for the ranks to start (load included) and for one collective; "
                                 "past it the engine is failed"
    )
    parallel_watch_seconds: float = Field(0.2, gt=0, description="how often rank 0 checks its ranks' processes")
    parallel_stop_seconds: float = Field(10.0, ge=0, description="on close: wait for the ranks to exit, then kill")
    structured_mask_threads: int = Field(
        0, ge=0, description="0: structured-output masks are computed on the engine thread (best on a few cores); "
                             "N: on a pool of N threads (many cores, large batches of constrained requests)"
    )


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    served_model_name: str | None = None
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    max_tokens_default: int = Field(256, ge=1, description="max_tokens when a request gives none")
    health_stall_seconds: float = Field(120.0, gt=0, description="an engine step running longer fails /health")
    engine_process: bool = Field(
        True, description="run the engine in an engine-core process of its own, so the API's event loop and the "
                          "engine's step loop do not share one interpreter lock; False: in a thread of the worker"
    )
    engine_failure_grace_seconds: float = Field(
        5.0, ge=0, description="after the engine fails: longest wait for open responses before the process exits"
    )
    fault_injection: bool = Field(
        False, description="tests only: honour the x-moecloud-fault header (never enable where tenants reach it)"
    )
    usage_reports: int = Field(
        10_000, ge=1, description="latest requests whose final usage the worker keeps for the gateway to read"
    )
    max_structured_bytes: int = Field(
        65536, ge=64, description="longest structured-output spec (JSON schema, regex, choices, grammar) a request "
                                  "may give, in bytes of its JSON text; longer: 400"
    )


_WEAK_SECRETS = {"admin", "secret", "changeme", "change-me", "password", "test", "default", "moecloud"}


def _refuse_weak_secret(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        raw = value.get_secret_value()
        if len(raw) < 16 or raw.lower() in _WEAK_SECRETS:
            raise ValueError("refusing a weak secret: use at least 16 random characters, or leave it unset")
    return value


class GatewaySettings(BaseModel):
    """The multi-tenant gateway. Limits of ``None`` mean "unlimited"; a key or tenant row may override."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    db_url: str | None = Field(None, description="SQLAlchemy URL; default: sqlite file <home>/moecloud.db")
    admin_key: SecretStr | None = Field(
        None, description="guards /admin; unset: generated once and kept in <home>/secrets/admin_key"
    )
    audit_key: SecretStr | None = Field(
        None, description="HMAC key of the audit chain; unset: generated once in <home>/secrets/audit_key"
    )
    key_rpm: int | None = Field(600, ge=1, description="requests per minute per API key")
    key_tpm: int | None = Field(1_000_000, ge=1, description="tokens per minute per API key")
    key_max_concurrency: int | None = Field(32, ge=1, description="in-flight requests per API key")
    tenant_rpm: int | None = Field(3000, ge=1, description="requests per minute per tenant")
    tenant_tpm: int | None = Field(5_000_000, ge=1, description="tokens per minute per tenant")
    auth_cache_seconds: float = Field(2.0, ge=0, description="how long a key lookup is reused")
    auth_cache_entries: int = Field(
        100_000, ge=1, description="keys remembered (least recently used go first); as many unknown tokens "
                                   "and client addresses with failed authentications are remembered apart"
    )
    auth_negative_cache_seconds: float = Field(
        1.0, ge=0, description="how long an unknown token is answered 401 without a database read"
    )
    auth_failure_limit: int = Field(
        20, ge=1, description="failed authentications from one client address per window, then 429"
    )
    auth_failure_window_seconds: float = Field(60.0, gt=0, description="the window of auth_failure_limit")
    admin_path_roots: list[Path] = Field(
        default_factory=list,
        description="directories under which the admin API accepts host paths (a deployment's checkpoint, "
                    "an evaluation's suite); empty: <home>/models",
    )
    catalog_cache_seconds: float = Field(2.0, ge=0, description="how long deployments and prices are reused")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest accepted request body")
    upstream_connect_timeout_seconds: float = Field(5.0, gt=0)
    upstream_read_timeout_seconds: float = Field(600.0, gt=0, description="longest silence from upstream")
    upstream_max_connections: int = Field(1000, ge=1)
    upstream_keepalive_seconds: float = Field(
        4.0, gt=0, description="idle connections to a deployment are closed after this (below its server's 5 s)"
    )
    default_tenant: str = Field("default", description="the tenant `moecloud serve` creates with a local key")
    internal_url: str | None = Field(
        None, pattern=r"^https?://",
        description="the gateway's own root URL, which evaluations started by the admin API call; "
                    "default: http://<host>:<port> of this gateway (loopback when bound to every address)",
    )

    _check_admin = field_validator("admin_key")(_refuse_weak_secret)
    _check_audit = field_validator("audit_key")(_refuse_weak_secret)

    def own_url(self) -> str:
        """The root URL at which this gateway reaches itself: ``internal_url``, else its bound address."""
        if self.internal_url:
            return self.internal_url.rstrip("/")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


class BillingSettings(BaseModel):
    """Money is Decimal, prices per million tokens. Holds bound a request's cost before it runs."""

    currency: str = "USD"
    trial_credit: Decimal = Field(Decimal("1.00"), ge=0, decimal_places=9, description="credit for each new tenant")
    hold_ttl_seconds: float = Field(
        900.0, gt=0, description="a hold not renewed for this long is released (a running request renews its "
                                 "hold every third of it)"
    )
    gateway_name: str = Field(
        "gateway", min_length=1, max_length=100,
        description="names this gateway's holds; gateways sharing a database need distinct names, since a "
                    "gateway releases the holds of its own name when it starts",
    )
    usage_report_timeout_seconds: float = Field(
        10.0, gt=0, description="longest wait for a worker's final usage of a request cut short"
    )
    reconcile_interval_seconds: float = Field(60.0, gt=0, description="how often expired holds are released")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens sent upstream when a request has none")
    max_tokens_limit: int = Field(131072, ge=1, description="largest max_tokens a request may ask for")
    hold_bytes_per_token: float = Field(
        1.0, gt=0, description="prompt bytes per token for the hold (1.0: byte-level BPE worst case)"
    )
    estimate_bytes_per_token: float = Field(
        4.0, gt=0, description="prompt bytes per token billed when the upstream reported no usage"
    )
    message_overhead_tokens: int = Field(8, ge=0, description="template tokens counted per chat message")
    # Prices per million tokens for a model that has no row in the prices table.
    default_input_miss_price: Decimal = Field(Decimal("0.27"), ge=0, decimal_places=9, description="input, cache miss")
    default_input_hit_price: Decimal = Field(Decimal("0.07"), ge=0, decimal_places=9, description="input, cache hit")
    default_output_price: Decimal = Field(Decimal("1.10"), ge=0, decimal_places=9, description="output")


class AdmissionSettings(BaseModel):
    """When every replica of a model is busy, requests wait in a per-model queue instead of failing."""

    queue_limit: int = Field(1000, ge=1, description="requests waiting per model; one more gets 429 at once")
    default_deadline_seconds: float = Field(30.0, gt=0, description="longest wait for a replica, then 429")
    max_deadline_seconds: float = Field(300.0, gt=0, description="cap on the x-moecloud-deadline header")
    default_priority: int = Field(1, ge=0, description="tier of a key that has none; lower tiers are served first")
    fair_credit_rounds: float = Field(1.0, ge=0, description="how far a tenant served below its share (its waiting "
                                      "requests ran out while others were served) may catch up: this many rounds of "
                                      "the model's slots, in requests of a weight-1 tenant; 0: no credit")


class RoutingSettings(BaseModel):
    """How a request picks a replica, and how failing replicas are taken out and probed back."""

    strategy: Literal["least_outstanding", "prefix_affinity", "cost_aware"] = "least_outstanding"
    replica_max_concurrency: int = Field(64, ge=1, description="in-flight requests per replica (unless the "
                                                               "deployment sets its own); more wait in the queue")
    max_attempts: int = Field(3, ge=1, description="replicas tried for one request before its first token")
    affinity_prefix_bytes: int = Field(512, ge=1, description="prompt bytes that pick a replica (prefix_affinity)")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open a replica's circuit")
    breaker_open_seconds: float = Field(10.0, gt=0, description="rest of an open circuit before one probe")
    health_interval_seconds: float = Field(2.0, gt=0, description="active health checks of every replica "
                                                                  "(a local replica's /health: its engine runs)")
    health_timeout_seconds: float = Field(2.0, gt=0, description="a check not answered by then has failed")
    health_failures_to_replace: int = Field(
        2, ge=1, description="consecutive failed checks that replace a local replica: with the defaults a replica "
                             "whose engine died is replaced within 2 x (2 s + 2 s) = 8 s")


class ScalingSettings(BaseModel):
    """Local replicas (engine worker processes) run by the gateway, and their autoscaler."""

    manage_local_replicas: bool = Field(True, description="start and stop local workers in this gateway")
    tick_seconds: float = Field(1.0, gt=0, description="how often replicas are reconciled and autoscaled")
    scale_up_queue_per_replica: int = Field(4, ge=1, description="queued requests per replica that add one")
    scale_up_wait_seconds: float = Field(2.0, gt=0, description="oldest queued wait that adds a replica")
    scale_up_cooldown_seconds: float = Field(10.0, ge=0, description="least time between two scale-ups")
    scale_down_idle_seconds: float = Field(300.0, gt=0, description="idle time that removes a replica")
    cold_start_timeout_seconds: float = Field(600.0, gt=0, description="a worker not healthy by then is killed")
    stop_grace_seconds: float = Field(30.0, ge=0, description="drain time of a stopped worker, then SIGKILL")


class RaySettings(BaseModel):
    """Where deployments with ``backend="ray"`` run their replicas (the ``ray`` extra must be installed)."""

    address: str | None = Field(None, description="a Ray cluster to join (e.g. auto); None: start a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance; None: all")
    http_host: str = Field("127.0.0.1", description="where Ray Serve's HTTP proxy listens (the gateway calls it)")
    http_port: int = Field(8100, ge=1, le=65535)
    replica_cpus: float = Field(1.0, ge=0, description="CPUs reserved for each engine replica")


class LogSettings(BaseModel):
    """What the processes log: one access line per gateway request at INFO; HTTP-client lines at DEBUG."""

    model_config = ConfigDict(populate_by_name=True)
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="the least severe line shown")
    json_lines: bool = Field(False, alias="json", description="one JSON object per line instead of text")


class ScreeningSettings(BaseModel):
    """Input and output screening in the gateway (``moecloud.security``); a tenant's or key's stored policy
    replaces ``default_policy`` for its requests."""

    enabled: bool = Field(True, description="screen every prompt and response; false: no screening at all")
    default_policy: dict[str, Any] = Field(
        default_factory=dict,
        description="the policy of a tenant and key that have none, as the JSON of moecloud.security.Policy "
                    "(fields given replace the default's: injection and jailbreak blocked, PII redacted on input; "
                    "secrets blocked, PII redacted on output)",
    )
    stream_window_chars: int = Field(
        256, ge=16, description="a streamed answer is screened in windows: text is held back until a line or "
                                "sentence ends, or this many characters are waiting"
    )
    stream_tail_chars: int = Field(
        48, ge=0, description="characters of already screened text screened again with the next window, so a "
                              "secret or number split across two windows is still found"
    )


class RetentionSettings(BaseModel):
    """How long usage and audit data are kept; older rows are purged (the ledger, which is money, never is)."""

    usage_days: int | None = Field(400, ge=1, description="usage records older than this are deleted; None: kept")
    audit_days: int | None = Field(
        365, ge=180, description="audit rows older than this are deleted, leaving a signed anchor so the rest of "
                                 "the chain still verifies (level 3 asks for at least 180 days); None: kept"
    )
    purge_interval_seconds: float = Field(3600.0, gt=0, description="how often the gateway purges")


class BackupSettings(BaseModel):
    """``moecloud backup create|restore``: logical archives of the database."""

    dir: Path | None = Field(None, description="where archives are written; default <home>/backups")
    keep: int = Field(7, ge=1, description="archives kept in dir; older ones are deleted after a new one")
    max_age_hours: float = Field(
        26.0, gt=0, description="the compliance report fails backup and recovery when the newest archive is older"
    )


class ComplianceSettings(BaseModel):
    """``moecloud compliance report``: the level-3 technical controls checked against the running platform."""

    out_dir: Path | None = Field(None, description="where reports are written; default <home>/compliance")
    tls_terminated: bool = Field(
        False, description="a TLS proxy terminates client connections in front of this gateway (the report "
                           "cannot see it from inside; say so here)"
    )


class ConsoleSettings(BaseModel):
    """The web console at /console: sign-in sessions, and what its pages read."""

    session_ttl_seconds: float = Field(12 * 3600.0, gt=0, description="a console sign-in ends this long after it began")
    session_idle_seconds: float = Field(3600.0, gt=0, description="a console session unused this long ends")
    cookie_secure: bool | None = Field(
        None, description="mark the session cookie Secure; None: when the request came over https"
    )
    # --- fields of the console's pages (gallery, operations) go below this line ---
    metrics_timeout_seconds: float = Field(
        2.0, gt=0, description="operations page: how long the gateway waits for one worker's /metrics"
    )
    operations_window_seconds: float = Field(
        300.0, gt=0, description="operations page: the recent requests its latency, tokens/s and request count cover"
    )


class _ProviderKeys(PydanticBaseSettingsSource):
    """``MOECLOUD_PROVIDER_KEY_<NAME>`` variables as ``provider_keys[NAME]``: the only variables whose values
    the gateway sends to a deployment (its other settings, e.g. the audit key, never leave it)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        keys = {name.removeprefix(PROVIDER_KEY_PREFIX): value for name, value in os.environ.items()
                if name.startswith(PROVIDER_KEY_PREFIX) and len(name) > len(PROVIDER_KEY_PREFIX) and value}
        return {"provider_keys": keys} if keys else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOECLOUD_", env_nested_delimiter="__", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _ProviderKeys(settings_cls), env_settings, dotenv_settings, file_secret_settings

    home: Path = Field(Path("var"), description="where moecloud keeps its database, models and logs")
    model: str | None = Field(None, description="default model path for `moecloud serve`")
    engine: EngineSettings = EngineSettings()
    serving: ServingSettings = ServingSettings()
    gateway: GatewaySettings = GatewaySettings()
    billing: BillingSettings = BillingSettings()
    admission: AdmissionSettings = AdmissionSettings()
    routing: RoutingSettings = RoutingSettings()
    scaling: ScalingSettings = ScalingSettings()
    ray: RaySettings = RaySettings()
    log: LogSettings = LogSettings()
    screening: ScreeningSettings = ScreeningSettings()
    retention: RetentionSettings = RetentionSettings()
    backup: BackupSettings = BackupSettings()
    compliance: ComplianceSettings = ComplianceSettings()
    console: ConsoleSettings = ConsoleSettings()
    provider_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description="external providers' keys by NAME, from MOECLOUD_PROVIDER_KEY_<NAME>"
    )

    @model_validator(mode="after")
    def _compile_cache_under_home(self) -> Settings:
        """A worker's compiled kernels live under its home unless ``engine.compile_cache_dir`` says otherwise, so a
        machine pays the compile once (the value is handed down to child processes with the engine section)."""
        if self.engine.compile_cache_dir is None:
            self.engine.compile_cache_dir = self.home / "compile-cache"
        return self

    def database_url(self) -> str:
        return self.gateway.db_url or f"sqlite:///{self.home / 'moecloud.db'}"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)


# What a child process (an engine worker, a Ray replica) needs of its parent's settings. Secrets never leave the
# gateway: a worker has no keys to check and no provider to call.
CHILD_SECTIONS = {"home", "engine", "serving", "log"}


class _HandedDown(Settings):
    """Settings a parent handed to its child: exactly the values given, the environment is not read again."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_for_child(settings: Settings) -> str:
    """The parent's side of the hand-down: the child sections as JSON (`settings_from_parent` reads it)."""
    return settings.model_dump_json(include=CHILD_SECTIONS)


def settings_from_parent(handed_down: str) -> Settings:
    return _HandedDown(**json.loads(handed_down))
