"""``DatabaseSettings``: one database's configuration, read from the environment.

Every field is read from a ``DATABASE_``-prefixed environment variable (or a
``.env`` file in the working directory): ``url`` from ``DATABASE_URL`` and so on.
More databases use other prefixes::

    analytics = DatabaseSettings(_env_prefix="ANALYTICS_DATABASE_")

After validation both URLs are resolved (a missing one is derived from the other)
and checked, so ``settings.url`` and ``settings.async_url`` are always set. The
URLs hold the password; ``repr()``/``str()`` and the ``masked_*`` properties show
them masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from portside.errors import ConfigurationError
from portside.urls import (
    derive_async_url,
    derive_sync_url,
    ensure_async,
    ensure_sync,
    mask_url,
    parse_url,
)

__all__ = ["DEFAULT_URL", "DatabaseSettings"]

#: The database used when neither URL is configured: a SQLite file in the working
#: directory, so an app runs out of the box.
DEFAULT_URL = "sqlite:///./portside.db"

_DEFAULT_ENV_PREFIX = "DATABASE_"

# The ``_env_prefix`` given to the constructor, if any. pydantic-settings does not
# keep it on the instance, but error messages should name the variables the user
# actually set (ANALYTICS_DATABASE_URL, not DATABASE_URL).
_constructor_env_prefix: ContextVar[str | None] = ContextVar(
    "portside_constructor_env_prefix", default=None
)


class DatabaseSettings(BaseSettings):
    """How to reach one database and how to pool, time out and log its connections.

    Raises :class:`~portside.errors.ConfigurationError` when the URLs cannot work
    together, and pydantic's ``ValidationError`` for an invalid field value; neither
    message contains a password.
    """

    model_config = SettingsConfigDict(
        env_prefix=_DEFAULT_ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # pydantic would otherwise quote the offending input, URL and password included.
        hide_input_in_errors=True,
        frozen=True,
    )

    url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL for the synchronous engine, e.g. "
            "postgresql+psycopg://user:password@host:5432/app; derived from the async URL "
            f"when unset, and {DEFAULT_URL} when both are unset."
        ),
    )
    async_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL for the asyncio engine, e.g. "
            "postgresql+asyncpg://user:password@host:5432/app; derived from the "
            "synchronous URL when unset."
        ),
    )
    echo: bool = Field(
        default=False,
        description="Log every SQL statement the engines run (for debugging, not production).",
    )
    engines: Literal["auto", "both", "sync", "async"] = Field(
        default="auto",
        description=(
            "Which engines to build for this database: auto (each kind whose driver is "
            "installed, the async one only under asyncio), both, only sync (which also "
            "works under trio and needs no async driver), or only async."
        ),
    )
    pool_size: int = Field(
        default=5,
        ge=1,
        description="Number of connections each engine's pool keeps open for reuse.",
    )
    max_overflow: int = Field(
        default=10,
        ge=0,
        description=(
            "Connections an engine may open beyond pool_size under load, closed again "
            "when returned; 0 allows none."
        ),
    )
    pool_timeout: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds to wait for a free connection when the pool is exhausted before the "
            "unit of work fails."
        ),
    )
    pool_recycle: float = Field(
        default=1800.0,
        allow_inf_nan=False,
        description=(
            "Seconds after which a pooled connection is replaced on its next checkout, "
            "to stay ahead of server and proxy idle timeouts; -1 disables recycling."
        ),
    )
    pool_pre_ping: bool = Field(
        default=True,
        description=(
            "Make sure a pooled connection is alive when it is checked out, and replace it "
            "if the server or the network has dropped it. On PostgreSQL this costs no round "
            "trip for a connection used in the last pool_pre_ping_idle seconds: the socket "
            "is checked for the server's goodbye, and a first statement that finds the "
            "connection lost runs again on a new one."
        ),
    )
    pool_pre_ping_idle: float = Field(
        default=30.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "With pool_pre_ping on PostgreSQL: seconds a pooled connection may sit idle "
            "before its checkout pings it (one round trip), for the networks that drop an "
            "idle connection without a word; 0 pings at every checkout."
        ),
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds one attempt to open a database connection may take, and the check "
            "a pooled PostgreSQL connection gets when it is checked out."
        ),
    )
    statement_timeout: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds portside waits for PostgreSQL to answer one statement (commit "
            "included) before it gives up on the connection, closes it and fails the unit "
            "of work with 503: a client-side bound for a server or network that stopped "
            "answering, unlike PostgreSQL's own statement_timeout."
        ),
    )
    startup_timeout: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Total seconds startup may spend reaching the database, retrying with "
            "backoff, before it fails."
        ),
    )
    shutdown_timeout: float = Field(
        default=10.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Seconds shutdown waits for in-flight units of work to finish before it "
            "disposes the engines anyway."
        ),
    )
    deadline: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds a unit of work may spend in the database, counted from its start: "
            "the database itself stops its statements and lock waits after that "
            "(PostgreSQL statement_timeout/lock_timeout set per transaction, a SQLite "
            "progress handler). None: no deadline. Overridden per unit or route."
        ),
    )
    cleanup_timeout: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds a session's rollback or close may take before its connection is "
            "invalidated instead of returned to the pool; also how long closing a "
            "connection, and disposing the engines at shutdown, may take before the "
            "connections are dropped without a goodbye."
        ),
    )
    sqlite_busy_timeout: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Seconds SQLite waits for a lock held by another connection before failing "
            "with 'database is locked'."
        ),
    )
    hide_parameters: bool = Field(
        default=True,
        description=(
            "Keep SQL parameter values, which may hold personal data or secrets, out of "
            "logs and error messages."
        ),
    )

    pgbouncer: bool = Field(
        default=False,
        description=(
            "Make PostgreSQL connections safe behind PgBouncer in transaction pooling "
            "mode: no named prepared statement outlives its transaction."
        ),
    )
    reset_session_state: bool = Field(
        default=True,
        description=(
            "Reset a PostgreSQL connection's session state (SET parameters, role, temporary "
            "tables, LISTEN, advisory locks) before the pool hands it out again, so no "
            "request sees another's; only once a statement that may have changed it ran "
            "on the connection."
        ),
    )

    telemetry: bool = Field(
        default=False,
        description=(
            "Record OpenTelemetry metrics and traces for this database's pools and the "
            "units of work that use it (needs portside[otel]; the app configures the SDK). "
            "Off: no OpenTelemetry import and no event listener at all."
        ),
    )
    held_connection_threshold: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "With telemetry on: seconds a checked-out connection may sit unused between "
            "statements (its handler awaiting something else, such as an HTTP API) before "
            "portside reports it as held, once per checkout, with the route."
        ),
    )
    replica_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description=(
            "URLs of PostgreSQL streaming replicas of this database, comma-separated in "
            "the environment. Read-only units of work (GET, HEAD, OPTIONS, TRACE "
            "requests) read from a healthy one; everything else uses the primary. Each "
            "URL is sync or async; the other kind is derived as for the primary."
        ),
    )
    replica_routing: bool = Field(
        default=True,
        description=(
            "Route read-only units of work to the replicas; false sends everything to "
            "the primary (the replicas are still built, pinged and reported)."
        ),
    )
    replica_max_lag: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds a replica may trail the primary before it is taken out of rotation "
            "until it catches up."
        ),
    )
    replica_wait: float = Field(
        default=0.25,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Seconds a read carrying a consistency token (a client that just wrote) "
            "waits for a replica to replay that write before reading from the primary."
        ),
    )
    replica_check_interval: float = Field(
        default=2.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds between checks of each replica's health and lag; a replica taken "
            "out of rotation is retried at this interval."
        ),
    )

    def __init__(self, *args: Any, **values: Any) -> None:
        token = _constructor_env_prefix.set(values.get("_env_prefix"))
        try:
            super().__init__(*args, **values)
        except ValidationError as exc:
            # Our own URL checks fail with a ConfigurationError, which pydantic wraps
            # in a ValidationError; hand the user the error portside documents.
            own = _configuration_error(exc)
            if own is None:
                raise
            raise own from None
        finally:
            _constructor_env_prefix.reset(token)

    @field_validator("url", "async_url", mode="before")
    @classmethod
    def _accept_url_objects(cls, value: Any) -> Any:
        """Let code pass a SQLAlchemy ``URL`` where a string is expected."""
        if isinstance(value, URL):
            return value.render_as_string(hide_password=False)
        return value

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _split_replica_urls(cls, value: Any) -> Any:
        """Accept ``"url1,url2"`` (the environment's form) as well as a sequence."""
        if isinstance(value, str | URL):
            value = [value] if isinstance(value, URL) else value.split(",")
        if isinstance(value, list | tuple):
            return tuple(
                v.render_as_string(hide_password=False) if isinstance(v, URL) else str(v).strip()
                for v in value
                if isinstance(v, URL) or str(v).strip()
            )
        return value

    @field_validator("pool_recycle")
    @classmethod
    def _check_pool_recycle(cls, value: float) -> float:
        # 0 would replace the connection on every checkout, i.e. no pooling at all.
        if value != -1 and value <= 0:
            raise ValueError("must be a positive number of seconds, or -1 to disable")
        return value

    @model_validator(mode="after")
    def _resolve_urls(self) -> Self:
        """Check the given URLs, derive the missing one, and store both as strings."""
        prefix = _constructor_env_prefix.get()
        if prefix is None:
            prefix = self.model_config.get("env_prefix", _DEFAULT_ENV_PREFIX)
        sync_setting, async_setting = f"{prefix}URL".upper(), f"{prefix}ASYNC_URL".upper()

        sync_url = async_url = None
        if self.url is not None:
            sync_url = parse_url(self.url, setting=sync_setting)
            ensure_sync(sync_url, setting=sync_setting)
            if "+" not in sync_url.drivername:
                # A bare scheme means "SQLAlchemy's default driver", which differs
                # between SQLAlchemy versions; spell out the one portside ships.
                sync_url = derive_sync_url(sync_url)
        if self.async_url is not None:
            async_url = parse_url(self.async_url, setting=async_setting)
            ensure_async(async_url, setting=async_setting)
        if sync_url is None and async_url is None:
            sync_url = make_url(DEFAULT_URL)

        if sync_url is None:
            assert async_url is not None
            sync_url = derive_sync_url(async_url)
        elif async_url is None:
            async_url = derive_async_url(sync_url)
        elif sync_url.get_backend_name() != async_url.get_backend_name():
            raise ConfigurationError(
                f"{sync_setting} ({mask_url(sync_url)}) and {async_setting} "
                f"({mask_url(async_url)}) point to different backends "
                f"({sync_url.get_backend_name()} and {async_url.get_backend_name()}); "
                "both must name the same database, or set only one and let portside "
                "derive the other."
            )

        # The model is frozen; these writes are part of its own validation, before
        # anyone else can see the instance.
        object.__setattr__(self, "url", _as_text(sync_url, given=self.url))
        object.__setattr__(self, "async_url", _as_text(async_url, given=self.async_url))
        self._check_replicas(prefix, sync_url)
        return self

    def _check_replicas(self, prefix: str, primary: URL) -> None:
        setting = f"{prefix}REPLICA_URLS".upper()
        for text in self.replica_urls:
            url = parse_url(text, setting=setting)
            if url.get_backend_name() != "postgresql" or primary.get_backend_name() != "postgresql":
                raise ConfigurationError(
                    f"{setting} ({mask_url(url)}): read replicas are PostgreSQL streaming "
                    f"replicas, and this database is {primary.get_backend_name()}; remove "
                    f"{setting} or point both the primary and the replicas at PostgreSQL."
                )

    def replica_settings(self) -> tuple[DatabaseSettings, ...]:
        """One :class:`DatabaseSettings` per replica URL: this database's, on that URL.

        The other kind of URL is derived from the one given, as for the primary.
        """
        replicas = []
        for text in self.replica_urls:
            is_async = make_url(text).get_dialect().is_async
            urls = (
                {"url": None, "async_url": text} if is_async else {"url": text, "async_url": None}
            )
            values = self.model_dump(exclude={"url", "async_url", "replica_urls"})
            replicas.append(type(self).model_validate(values | urls | {"replica_urls": ()}))
        return tuple(replicas)

    @property
    def sync_url_object(self) -> URL:
        """The synchronous engine's URL, parsed (password included)."""
        return make_url(_resolved(self.url))

    @property
    def async_url_object(self) -> URL:
        """The asyncio engine's URL, parsed (password included)."""
        return make_url(_resolved(self.async_url))

    @property
    def masked_url(self) -> str:
        """The synchronous URL with its password as ``***``, for logs and messages."""
        return mask_url(_resolved(self.url))

    @property
    def masked_async_url(self) -> str:
        """The asyncio URL with its password as ``***``, for logs and messages."""
        return mask_url(_resolved(self.async_url))

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() and str() are built from these; show the URLs masked only.
        for name, value in super().__repr_args__():
            if name in ("url", "async_url") and value is not None:
                yield name, mask_url(value)
            elif name == "replica_urls":
                yield name, tuple(mask_url(url) for url in value)
            else:
                yield name, value


def _resolved(value: str | None) -> str:
    if value is None:  # only possible for an instance built with model_construct()
        raise ConfigurationError("These settings were not validated; build them normally.")
    return value


def _as_text(url: URL, *, given: str | None) -> str:
    """``url`` as text: as the user wrote it when portside left it unchanged."""
    # SQLAlchemy re-renders some parts differently (":memory:" -> "%3Amemory%3A"),
    # so the user's own spelling is kept when it means the same URL.
    if given is not None and make_url(given.strip()) == url:
        return given.strip()
    return url.render_as_string(hide_password=False)


def _configuration_error(exc: ValidationError) -> ConfigurationError | None:
    """The ConfigurationError behind a ValidationError, if that is all it holds."""
    errors = exc.errors()
    if len(errors) != 1:
        return None
    cause = errors[0].get("ctx", {}).get("error")
    return cause if isinstance(cause, ConfigurationError) else None
