"""Settings, read from ``TELLONCE_*`` environment variables.

Settings fail closed: a placeholder root key is refused here; production's missing keys,
SQLite and plain-http public URL are refused before start-up by ``service.bootstrap``
rather than discovered when the first citizen is read.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./.tellonce/tellonce.db"
# The URL schemes (dialect+driver) the service runs on: SQLAlchemy's asyncio drivers.
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "placeholder", "todo"}


class Settings(BaseSettings):
    """Process-wide configuration; see the README's configuration table."""

    # hide_input_in_errors: a refused TELLONCE_ROOT_KEY or PIN is never echoed by a
    # validation error, wherever that error is printed or logged.
    model_config = SettingsConfigDict(env_prefix="TELLONCE_", extra="ignore", hide_input_in_errors=True)

    env: Environment = "development"
    database_url: str = DEFAULT_DATABASE_URL
    # PostgreSQL: a pooled connection older than this many seconds is replaced when it is
    # next taken from its pool, before anything is sent on it (0: never). A firewall, NAT
    # gateway or load balancer between the service and the database may forget an idle
    # connection without telling either end; a statement sent on it would wait for TCP to
    # give up (some 15 minutes on Linux). The default stays below the shortest idle timeout
    # common among them (4 minutes, Azure's load balancer), and costs each pooled
    # connection one reconnect every 3 minutes. SQLite ignores it.
    db_pool_recycle_seconds: int = Field(default=180, ge=0, le=86_400)
    data_dir: Path = Path("./.tellonce")
    root_key: SecretStr | None = None
    webhook_allow_private: bool = False

    # Where department KEKs live: "local" (wrapped under the root key, stored in the
    # database) or "pkcs11" (generated and kept inside a PKCS#11 token; see crypto/hsm.py).
    key_provider: Literal["local", "pkcs11"] = "local"
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_pin_file: Path | None = None

    policies_dir: Path = Path("./policies")
    # Requests whose body exceeds this are refused with 413 while streaming.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # A request's head and body must arrive within this many seconds of its first byte (of
    # the connection's opening, for its first request), or it is refused with 408 and the
    # connection closed (service/read_deadline.py): a client dripping bytes holds nothing.
    request_read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # DEBUG, INFO, WARNING, ERROR or CRITICAL, in any case (``_log_level_is_known``).
    log_level: str = "INFO"
    log_json: bool = True
    # The public base URL: used as the token issuer and in metadata documents.
    public_url: str = "http://127.0.0.1:8000"
    # Production refuses SQLite and a non-https public URL unless these say otherwise; an
    # override in effect is logged at start (see service/bootstrap.py).
    allow_sqlite_in_production: bool = False
    allow_insecure_public_url: bool = False
    access_token_ttl_seconds: int = Field(default=300, ge=10, le=3600)
    # Run the audit sequencer and the event dispatcher inside `serve`.
    run_workers: bool = True
    # `tellonce worker` raises its own nice value to at least this (``os.setpriority``), so
    # that on cores it shares with `serve` the requests get the CPU first and its
    # background work (sequencing, notices, webhooks) runs in the gaps; 0 leaves it as
    # started. It is never lowered: that would need privileges.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Freeze the heap startup made out of the garbage collector's reach (``gc.freeze``),
    # and collect the youngest generation less often (``service.heap``). `tellonce serve`
    # and `tellonce worker` turn it on; off elsewhere, since tests make many apps per process.
    freeze_startup_heap: bool = False
    # Auth: the access tokens' audience, verified-token cache bound, default rate limit.
    token_audience: str = "tellonce"  # noqa: S105 - an audience name, not a secret
    token_cache_size: int = Field(default=10_000, ge=1)
    client_rate_per_second: float = Field(default=200.0, gt=0)
    client_rate_burst: int = Field(default=400, ge=1)
    # Where the buckets live: "memory" (each process its own), "database" (one bucket per
    # client shared by every replica; PostgreSQL only), or "auto" (database on PostgreSQL).
    rate_limit_store: Literal["auto", "memory", "database"] = "auto"
    # Tell-us-once events: webhook delivery (timeout, retries with backoff, then dead) and
    # how often a waiting feed or an idle dispatcher looks for events other processes wrote.
    # The Standard Webhooks spec recommends a 15 to 30 s timeout per attempt, so a receiver
    # has time to process and answer.
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # Retries span more than a day, as the spec recommends (its example schedule runs for
    # days), so a receiver that is down for hours or a night loses nothing to ``dead``. The
    # delay after failed attempt n is drawn from [c/2, c], c = min(cap, base * 2^(n-1)):
    # 5 s doubling to the 10 h cap, then 10 h steps; 18 attempts make 17 delays that add up
    # to between 25.7 h and 51.4 h (38.5 h on average) from the first attempt to the last.
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_cap_seconds: float = Field(default=36_000.0, gt=0)
    webhook_max_attempts: int = Field(default=18, ge=1, le=100)
    # Subscriptions (not deleted) one department may have; one more is refused with 409.
    max_subscriptions_per_department: int = Field(default=100, ge=1, le=100_000)
    # After a subscription's signing secret is rotated, deliveries carry the old secret's
    # signature beside the new one's for this long (0: the old one stops at once), so its
    # receiver can switch secrets without refusing a delivery. At most a week.
    webhook_secret_overlap_seconds: int = Field(default=86_400, ge=0, le=604_800)
    events_poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # POST /v1/policies/simulate (and the console's simulation): the most audit entries one
    # simulation replays. A window holding more is refused with 422, naming the later
    # ``since`` that fits; each entry costs some 33 us of CPU, so the default bounds one
    # call to a few seconds.
    simulate_max_entries: int = Field(default=100_000, ge=1)
    # verify: comparisons a consumer may ask per citizen, field and UTC day where its
    # agreement leaves the claims open (an 'in' of N values counts N); then 429.
    verify_unconstrained_per_day: int = Field(default=3, ge=0)
    # Failed client authentications (token endpoint and console sign-in) allowed per client
    # id from one source address, and per source address, in the current and the previous
    # window before 429; counted in the database (service/auth/throttle.py). A ceiling per
    # client id across addresses only when set: a client id is no secret, and any ceiling
    # lets whoever has that many addresses lock the client out.
    auth_failure_window_seconds: int = Field(default=60, ge=1, le=86_400)
    auth_failures_per_client_address: int = Field(default=10, ge=1)
    auth_failures_per_address: int = Field(default=50, ge=1)
    auth_failures_per_client: int | None = Field(default=None, ge=1)
    # private_key_jwt: the longest an assertion may live (exp - iat, and exp - now).
    assertion_max_lifetime_seconds: int = Field(default=300, ge=10, le=3600)

    @field_validator("root_key")
    @classmethod
    def _root_key_is_32_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if raw.lower() in _PLACEHOLDERS:
            raise ValueError("TELLONCE_ROOT_KEY is a placeholder; set a real base64 32-byte key")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("TELLONCE_ROOT_KEY must be base64") from None
        if len(decoded) != 32:
            raise ValueError("TELLONCE_ROOT_KEY must decode to exactly 32 bytes")
        return SecretStr(raw)

    @field_validator("database_url")
    @classmethod
    def _database_url_has_an_async_driver(cls, value: str) -> str:
        """One of the two drivers the service runs on, so that another URL (``mysql://``,
        a plain ``sqlite://`` or ``postgresql://``, no URL at all) is this setting's one-line
        refusal rather than SQLAlchemy's traceback from whichever command opens it first."""
        scheme, separator, _rest = value.strip().partition("://")
        if not separator or scheme not in DATABASE_DRIVERS:
            raise ValueError(
                "TELLONCE_DATABASE_URL must be a sqlite+aiosqlite:///PATH or postgresql+asyncpg://... URL"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, value: str) -> str:
        """A standard level, upper-cased. Not uvicorn's TRACE, below DEBUG: its lines hold
        each request's path and query as sent, and a caller may put a national id in either
        (the access log keeps the route template only; ``service.observability``)."""
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"TELLONCE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _pkcs11_settings_complete(self) -> Settings:
        """In every environment: a token cannot be opened without its module, label and PIN."""
        if self.key_provider == "pkcs11":
            if not self.pkcs11_module or not self.pkcs11_token_label:
                raise ValueError("TELLONCE_KEY_PROVIDER=pkcs11 needs TELLONCE_PKCS11_MODULE and _TOKEN_LABEL")
            if self.pkcs11_pin is None and self.pkcs11_pin_file is None:
                raise ValueError("TELLONCE_KEY_PROVIDER=pkcs11 needs TELLONCE_PKCS11_PIN or _PIN_FILE")
        return self

    @model_validator(mode="after")
    def _shared_buckets_need_postgres(self) -> Settings:
        if self.rate_limit_store == "database" and self.is_sqlite:
            raise ValueError(
                "TELLONCE_RATE_LIMIT_STORE=database needs PostgreSQL; on SQLite one process "
                "serves and keeps its buckets in memory (leave it auto or memory)"
            )
        return self

    @property
    def shares_rate_limit(self) -> bool:
        """Whether the client rate limit is one bucket per client in the database."""
        return self.rate_limit_store == "database" or (self.rate_limit_store == "auto" and not self.is_sqlite)

    @property
    def root_key_file(self) -> Path:
        return self.data_dir / "root.key"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def allows_generated_keys(self) -> bool:
        """Only development and test may create key files on their own."""
        return self.env != "production"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
