"""The schema of ``tierwise.yaml``.

Configuration is data: every knob the engine reads is a field here, validated once at start-up, so a typo fails
``tierwise check-config`` with its path in the file instead of surfacing as a wrong route at 3 a.m.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from tierwise.apis.embeddings_config import EmbeddingsConfig
from tierwise.dashboard.config import DashboardConfig
from tierwise.rollout.config import RolloutConfig
from tierwise.telemetry.config import TelemetryConfig


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class ProviderConfig(_Strict):
    """One upstream endpoint and the wire format it speaks."""

    format: Literal["openai", "anthropic", "llamacpp"]  # the lab's replay provider is injected, never configured
    base_url: str | None = Field(
        default=None, description="e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (not for llamacpp)"
    )
    api_key_env: str | None = Field(default=None, description="name of the environment variable holding the key")
    api_key: str | None = Field(default=None, description="literal key; prefer api_key_env or ${VAR} interpolation")
    timeout_s: PositiveFloat = Field(default=60.0, description="read timeout for one upstream call")
    connect_timeout_s: PositiveFloat = 5.0
    max_connections: PositiveInt = Field(default=256, description="keep-alive pool size to this upstream")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers sent upstream")
    anthropic_version: str = "2023-06-01"
    # llamacpp (in-process) only
    n_threads: PositiveInt = Field(default=1, description="llamacpp: CPU threads per model (1 is right on 2 cores)")
    n_ctx: PositiveInt = Field(default=2048, description="llamacpp: context length")

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderConfig:
        if self.format in ("openai", "anthropic") and not self.base_url:
            raise ValueError(f"provider format '{self.format}' needs base_url")
        return self


class TokenPrice(_Strict):
    """USD per 1M tokens, as providers publish them."""

    input: NonNegativeFloat
    output: NonNegativeFloat
    cache_read: NonNegativeFloat | None = Field(default=None, description="defaults to input")
    cache_write: NonNegativeFloat | None = Field(default=None, description="defaults to input")
    reasoning: NonNegativeFloat | None = Field(default=None, description="defaults to output")


class LocalTCO(_Strict):
    """Total cost of ownership of a self-hosted model, turned into a per-token price.

    cost per hour = hardware / (years x 8760 h) + watts/1000 x $/kWh + maintenance / 8760 h;
    tokens per hour = tokens/s x 3600 x utilisation. Input tokens are weighted by ``input_token_weight`` because
    prefill is much cheaper than decode on the same hardware.
    """

    hardware_usd: NonNegativeFloat
    depreciation_years: PositiveFloat = 3.0
    watts: NonNegativeFloat = 0.0
    usd_per_kwh: NonNegativeFloat = 0.15
    maintenance_usd_per_year: NonNegativeFloat = 0.0
    tokens_per_second: PositiveFloat
    utilisation: float = Field(default=0.5, gt=0, le=1)
    input_token_weight: float = Field(default=0.1, ge=0, le=1)


class ModelConfig(_Strict):
    """A concrete model the gateway can call."""

    provider: str
    upstream: str | None = Field(default=None, description="model name sent upstream; defaults to the key")
    price: TokenPrice | None = Field(default=None, description="overrides genai-prices")
    local: LocalTCO | None = Field(default=None, description="price from total cost of ownership")
    context_window: PositiveInt | None = None
    max_output: PositiveInt | None = Field(
        default=None,
        description="largest completion (max_tokens / max_completion_tokens) this model may be asked for; a request naming the model with more gets a 400 (unset: server.max_tokens_limit)",
    )
    reasoning: bool = False
    completion_floor: PositiveInt = Field(default=4096, description="min max_tokens for reasoning models")
    value_tiers: list[str] | None = Field(
        default=None,
        description="only callers of these value tiers (e.g. [premium]) may use this model; unset: every caller",
    )
    expected_output_tokens: PositiveInt = Field(default=256, description="completion length used in estimates")
    tokenizer: str | None = Field(default=None, description="tiktoken encoding for estimates (auto if unset)")
    # llamacpp only
    gguf: str | None = Field(default=None, description="llamacpp: path to a .gguf, or a packaged model name")

    @model_validator(mode="after")
    def _one_price(self) -> ModelConfig:
        if self.price is not None and self.local is not None:
            raise ValueError("give either price or local, not both")
        return self


class GateConfig(_Strict):
    """A cascade rung's confidence gate: confidence in [0, 1]; escalate when it is below ``threshold``.

    Whatever the kind, an empty answer or ``finish_reason: length`` always fails, and a gate that errors counts as
    "escalate", never as "pass".
    """

    kind: Literal["logprob", "vote", "verifier", "validator", "learned", "contextual"]
    threshold: float = Field(default=0.5, ge=0, le=1)
    # vote (self-consistency, Yue et al. 2024): k sampled answers, confidence = share agreeing with the majority
    samples: PositiveInt = Field(default=5, description="vote: number of sampled answers")
    temperature: NonNegativeFloat = Field(default=0.8, description="vote: sampling temperature")
    extract: str = Field(
        default="auto", description="vote: final-answer extractor: auto | number | choice | text | a regex with one group"
    )
    # verifier (AutoMix-style): a cheap model judges the answer
    verifier_model: str | None = Field(default=None, description="verifier: model that judges (default: same)")
    verifier_samples: PositiveInt = Field(default=1, description="verifier: judgements to average")
    # validator: rules; confidence is 1 when all pass, else 0
    json_schema: dict[str, Any] | None = Field(default=None, description="validator: answer must be JSON matching")
    regex: str | None = Field(default=None, description="validator: answer must match (re.search)")
    reject_refusals: bool = Field(default=True, description="validator: refusal phrases fail")
    # learned / contextual: a gate model trained on outcomes (tierwise train-gate); contextual gates also read the
    # earlier rungs' answers and the cascade router's per-model priors
    artifact: str | None = Field(default=None, description="learned/contextual: path of the trained gate artifact")


class LearnedConfig(_Strict):
    """A trained pre-generation router (``tierwise train-router``) and its choice rule."""

    artifact: str = Field(description="path of the router artifact (.npz)")
    rule: Literal["threshold", "lambda"] = Field(
        default="threshold",
        description="threshold: cheapest model whose predicted quality >= knob; lambda: max predicted quality - knob x cost",
    )
    knob: float = Field(default=0.7, ge=0, description="the threshold, or lambda (per USD of mean request cost)")
    quality_floor: float | None = Field(
        default=None, ge=0, le=1,
        description="margin routing (callers with revenue_per_request_usd): predicted quality a model must reach",
    )


class RungConfig(_Strict):
    model: str
    gate: GateConfig | None = Field(default=None, description="required on every rung but the last")


class CascadeConfig(_Strict):
    """Small-to-big: each rung answers; its gate decides whether the answer is served or the next rung is tried."""

    rungs: list[RungConfig] = Field(min_length=1)
    start: LearnedConfig | None = Field(
        default=None, description="a learned router picks the starting rung (rungs before it are skipped)"
    )
    router: str | None = Field(
        default=None,
        description="router artifact whose per-model predictions contextual gates read as priors (default: start's)",
    )
    stream_first_rung: bool = Field(
        default=False,
        description="streaming requests: stream rung 1 live with no gate (fast) instead of streaming the gated answer",
    )
    hedge_after_ms: float | None = Field(
        default=None, gt=0,
        description="when a rung has not answered within this many ms, start the next rung too; the first answer that "
                    "passes its gate is served (the last rung's passes by definition), the other is cancelled and "
                    "both are booked (tierwise.routing.hedge)",
    )


class TierConfig(_Strict):
    """A capability class: what output it promises, which models may serve it, and how to pick among them."""

    description: str = ""
    utterances: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list, description="pool; for a cascade, defaults to the rung models")
    policy: Literal["priority", "cheapest", "fastest_ttft", "cascade", "learned"] = "priority"
    cascade: CascadeConfig | None = None
    learned: LearnedConfig | None = Field(default=None, description="policy 'learned': the router and its rule")
    fallback: str | None = Field(default=None, description="last resort for this tier; defaults to fallback_model")
    expected_output_tokens: PositiveInt | None = Field(default=None, description="overrides the model's")
    threshold: float | None = Field(
        default=None, ge=-1, le=1, description="semantic match threshold (cosine); defaults to classifier.threshold"
    )

    @model_validator(mode="after")
    def _pool(self) -> TierConfig:
        if self.policy == "cascade":
            if self.cascade is None:
                raise ValueError("policy 'cascade' needs a cascade: block with rungs")
            for i, rung in enumerate(self.cascade.rungs[:-1]):
                if rung.gate is None:
                    raise ValueError(f"cascade rung {i} ({rung.model}) needs a gate (only the last rung may omit it)")
            if not self.models:
                self.models = [r.model for r in self.cascade.rungs]
        elif self.cascade is not None:
            raise ValueError(f"a cascade: block needs policy 'cascade' (policy is '{self.policy}')")
        if self.policy == "learned" and self.learned is None:
            raise ValueError("policy 'learned' needs a learned: block with the router artifact")
        if not self.models:
            raise ValueError("a tier needs at least one model")
        return self


class ClassifierConfig(_Strict):
    """How ``model="auto"`` requests find their tier (explicit tags always win)."""

    kind: Literal["none", "semantic"] = Field(
        default="none", description="none: auto goes to default_tier; semantic: embed and match tier descriptions"
    )
    embedder: Literal["minilm-onnx", "minilm-static"] = Field(
        default="minilm-onnx", description="minilm-onnx: int8 MiniLM (~ms); minilm-static: distilled static (~0.1 ms)"
    )
    threshold: float | None = Field(
        default=None, ge=-1, le=1,
        description="cosine threshold per tier; unset = the embedder's default fitted on the dev split (0.0 minilm-onnx, 0.475 static)",
    )
    max_tokens: PositiveInt | None = Field(
        default=None, le=512,
        description="WordPiece tokens of the prompt's head the embedder reads; unset = 64 for minilm-onnx (chosen on the dev split; latency grows with it), 512 for static",
    )
    fallback_tier: str | None = Field(default=None, description="tier when nothing clears its threshold")
    max_prompt_chars: PositiveInt = Field(default=2000, description="only the last user text up to this is embedded")


class RetryConfig(_Strict):
    max_retries: int = Field(default=2, ge=0, description="retries per model before falling back")
    base_delay_ms: NonNegativeFloat = 100.0
    max_delay_ms: NonNegativeFloat = 2000.0
    max_retry_after_s: NonNegativeFloat = Field(default=10.0, description="longer Retry-After: fall back instead")
    cooldown_failures: PositiveInt = Field(default=3, description="consecutive failures that trigger a cooldown")
    cooldown_s: NonNegativeFloat = 30.0
    fallback_reserve_s: NonNegativeFloat | None = Field(
        default=None,
        description="seconds of the request deadline a model's tries leave for the models after it (never more than "
        "their fair share); unset = the next model's provider timeout; 0 = retries may use up the deadline",
    )


class SessionConfig(_Strict):
    ttl_s: PositiveFloat = 3600.0
    max_sessions: PositiveInt = 100_000


class LedgerConfig(_Strict):
    backend: Literal["sqlite", "memory", "postgres"] = Field(
        default="sqlite",
        description="sqlite (one file at 'path'), memory (throwaway), postgres (one ledger several gateway "
                    "replicas write: needs 'dsn' and the 'postgres' extra)",
    )
    path: str = Field(
        default="tierwise-ledger.db",
        description="sqlite: the database file; postgres: where this process's local files go (crash journal "
                    "'<path>.journal', fallback file '<path>.unwritten.jsonl'); the rows live in PostgreSQL",
    )
    dsn: str | None = Field(
        default=None,
        description="postgres: libpq connection string or URI, e.g. 'postgresql://tierwise@db:5432/ops' (keep "
                    "the password out of the file: ${VAR} interpolation, PGPASSWORD or ~/.pgpass)",
    )
    pg_schema: str = Field(
        default="tierwise", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="postgres: the schema holding the ledger tables (created if missing)",
    )
    batch_size: PositiveInt = 256
    flush_interval_ms: PositiveFloat = 200.0
    journal: bool = Field(
        default=True,
        description="crash journal: every record written to disk before the response completes, replayed at start "
                    "(sqlite and postgres backends: the journal is always a local directory; the memory backend "
                    "keeps nothing to replay into)",
    )
    journal_dir: str | None = Field(default=None, description="journal directory (default: '<path>.journal')")
    fsync: Literal["never", "interval", "always"] = Field(
        default="never",
        description="journal fsync: never (survives process crashes), interval (once per flush interval: also "
                    "power loss, minus the last interval), always (per record: slowest)",
    )
    on_unwritable: Literal["refuse", "serve"] = Field(
        default="refuse",
        description="when the journal cannot be written (disk full, read-only): refuse new requests with 503 "
                    "(nothing served unbooked) or serve and keep records in memory only",
    )
    fallback_path: str | None = Field(
        default=None,
        description="where rows the store refuses at shutdown go (default: '<path>.unwritten.jsonl'); "
                    "put it on another disk than the database",
    )

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> LedgerConfig:
        if self.backend == "postgres" and not (self.dsn and self.dsn.strip()):
            raise ValueError("ledger.backend 'postgres' needs ledger.dsn (a PostgreSQL connection string)")
        return self


class GcConfig(_Strict):
    """The cyclic garbage collector of a ``tierwise serve`` process (see :mod:`tierwise.gateway.gc_tuning`)."""

    freeze: bool = Field(
        default=True,
        description="after start-up, move every object made so far out of the collector's reach (gc.freeze): "
                    "full collections then stop re-walking config, price tables and router state on every pass",
    )
    young_threshold: int = Field(
        default=10_000, ge=0, le=10_000_000,
        description="allocations between young-generation collections (Python's default is 700; 0 keeps it): a "
                    "request's objects are freed by reference counting when it ends, so a larger threshold lets "
                    "them go before the collector walks them",
    )


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    request_deadline_s: PositiveFloat = Field(default=120.0, description="whole-request budget incl. retries")
    log_prompts: bool = Field(default=False, description="log prompt/answer text (off: never in logs)")
    api_keys_env: str | None = Field(
        default=None, description="env var with comma-separated 'id:key' pairs; unset = open gateway"
    )
    body_timeout_s: PositiveFloat = Field(
        default=30.0, description="time allowed to receive a request body once its headers are in; slower: 408"
    )
    max_n: PositiveInt = Field(default=8, description="largest 'n' (choices per request) a client may ask for")
    max_tokens_limit: PositiveInt = Field(
        default=1_048_576,
        description="largest max_tokens / max_completion_tokens for models without max_output (no model emits "
        "anything near 2^20 tokens in one answer: above it is a client bug, refused with a 400)",
    )
    gc: GcConfig = Field(default_factory=GcConfig)


class BudgetCap(_Strict):
    daily_usd: float | None = Field(default=None, gt=0, le=1e9, description="UTC calendar day")
    monthly_usd: float | None = Field(default=None, gt=0, le=1e9, description="UTC calendar month")


class BudgetStep(_Strict):
    at: float = Field(gt=0, lt=1, description="consumption (settled + reserved) / cap at which the step starts")
    action: Literal["cheaper", "fallback_only"]


def _default_steps() -> list[BudgetStep]:
    return [BudgetStep(at=0.8, action="cheaper"), BudgetStep(at=0.95, action="fallback_only")]


class BudgetsConfig(_Strict):
    """Spend caps and the graded response to them (see :mod:`tierwise.governance.budgets`)."""

    caps: dict[str, BudgetCap] = Field(
        default_factory=dict,
        description="by scope: global | customer:<name> | customer:* (each customer) | department:<name> | "
                    "department:* | project:<name> | project:* | model:<name> | model:*; keys' and principals' "
                    "own budgets are set with `tierwise keys` / the admin API",
    )
    steps: list[BudgetStep] = Field(default_factory=_default_steps, description="ascending; 100 % always refuses")
    projection_min_days: int = Field(default=3, ge=1, le=31,
                                     description="past days of this month needed before the projection acts")
    reservation_ttl_s: float = Field(default=900, gt=0, description="a reservation never settled (process died) "
                                     "expires after this; keep it above server.request_deadline_s")

    @model_validator(mode="after")
    def _steps_ascend(self) -> BudgetsConfig:
        ats = [s.at for s in self.steps]
        if ats != sorted(ats) or len(set(ats)) != len(ats):
            raise ValueError("budgets.steps must be in strictly ascending order of 'at'")
        for scope in self.caps:
            kind, _, name = scope.partition(":")
            if scope != "global" and (kind not in ("customer", "department", "project", "model") or not name):
                raise ValueError(f"budgets.caps: unknown scope '{scope}' (global, customer:<name>, customer:*, "
                                 "department:…, project:…, model:…)")
        return self


class AnomalyConfig(_Strict):
    """Spend-rate anomaly detection per principal and model (see :mod:`tierwise.governance.anomaly`)."""

    enabled: bool = True
    bucket_s: float = Field(default=300, gt=0, description="spend is summed in buckets of this many seconds")
    history_buckets: int = Field(default=288, ge=4, description="buckets of history the baseline is taken from")
    min_buckets: int = Field(default=12, ge=3, description="history needed before anything is flagged")
    k: float = Field(default=6.0, gt=0, description="alarm at median + k x 1.4826 x MAD of past buckets")
    min_usd: float = Field(default=0.5, ge=0, description="never alarm below this spend per bucket")
    webhook_url: str | None = Field(default=None, description="POST every alert here (JSON)")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    tighten: Literal["none", "cheaper", "fallback_only", "block"] = Field(
        default="none", description="hold an anomalous principal to this budget step")
    tighten_for_s: float = Field(default=3600, gt=0)


class StateConfig(_Strict):
    """Where budgets, rate limits, session pins and cooldowns are kept (see :mod:`tierwise.state.redis_backend`)."""

    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="memory: this process (exact for one process); redis: shared by every replica (needs 'url' and "
                    "the 'redis' extra)",
    )
    url: str | None = Field(
        default=None, description="redis: redis://[user:password@]host:port/db, rediss:// (TLS) or unix://path; "
                                  "put the password in an environment variable: ${REDIS_URL}",
    )
    prefix: str = Field(default="tw", pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                        description="redis: keys are '{prefix}:…' (one hash tag: runs on Redis Cluster too)")
    on_unavailable: Literal["closed", "open"] = Field(
        default="closed",
        description="redis unreachable: closed refuses requests that budgets or rate limits govern (503 "
                    "state_unavailable); open admits them without (noted on their ledger records)",
    )
    timeout_s: float = Field(default=0.5, gt=0, le=30, description="redis: connect and per-call timeout")

    @model_validator(mode="after")
    def _url_for_redis(self) -> StateConfig:
        if self.backend == "redis" and not (self.url and self.url.strip()):
            raise ValueError("state.backend 'redis' needs state.url (e.g. redis://127.0.0.1:6379/0)")
        return self


class GovernanceConfig(_Strict):
    """Virtual keys and principals (``tierwise keys`` / ``tierwise principals`` / the admin API)."""

    keys: Literal["required", "optional", "off"] = Field(
        default="off",
        description="required: every request needs a valid key (none, unknown, revoked or expired: 401); optional: "
                    "no key = the anonymous principal, a bad key = 401; off: virtual keys are not checked",
    )
    backend: Literal["sqlite", "postgres"] | None = Field(
        default=None,
        description="where keys and principals live; unset: postgres when governance.dsn is set or the ledger is "
                    "on PostgreSQL, else sqlite",
    )
    path: str = Field(default="tierwise-governance.db", description="sqlite: the governance database file")
    dsn: str | None = Field(
        default=None, description="postgres: connection string (default: ledger.dsn); keep passwords out of the file",
    )
    pg_schema: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="postgres: schema of the governance tables (default: ledger.pg_schema)",
    )
    refresh_s: float = Field(
        default=2.0, gt=0, le=3600,
        description="each gateway reloads keys this often in the background: a revoke or rotation made elsewhere "
                    "takes effect within it",
    )
    negative_cache_s: float = Field(
        default=5.0, ge=0, le=3600, description="how long an unknown key is answered 401 without asking the store",
    )
    max_lookups_per_s: float = Field(
        default=50.0, gt=0,
        description="store lookups for keys not yet in memory, per second and gateway; beyond it such keys are "
                    "401 until the next refresh (a flood of bad keys cannot hammer the store)",
    )


class AdminConfig(_Strict):
    """The admin API (principals and keys), on its own listener unless ``same_listener``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    api_key_env: str = Field(default="TIERWISE_ADMIN_KEY", description="env var holding the admin key (>= 16 chars)")
    same_listener: bool = Field(
        default=False, description="mount the admin API under /admin on the public listener instead of its own",
    )


from tierwise.rollout.candidate import CanaryConfig, ShadowConfig, resolve_forward_refs  # noqa: E402

resolve_forward_refs(TierConfig)


class TierwiseConfig(_Strict):
    """Root of ``tierwise.yaml``."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    sessions: SessionConfig = Field(default_factory=SessionConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    anomalies: AnomalyConfig = Field(default_factory=AnomalyConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    admin: AdminConfig | None = Field(default=None, description="the admin API; absent or null: off")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)  # /metrics and OpenTelemetry
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    embeddings: EmbeddingsConfig | None = Field(default=None, description="models serving /v1/embeddings")
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    tiers: dict[str, TierConfig]
    default_tier: str
    fallback_model: str
    shadow: ShadowConfig | None = Field(default=None, description="a candidate policy decides in parallel (recorded)")
    canary: CanaryConfig | None = Field(default=None, description="a share of traffic goes to a candidate policy")

    def upstream_name(self, model: str) -> str:
        return self.models[model].upstream or model
