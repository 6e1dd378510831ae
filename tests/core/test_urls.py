"""Database URLs: parsing errors, sync/async derivation, and keeping passwords secret."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import URL, make_url

from portside.errors import ConfigurationError
from portside.urls import (
    UNPARSEABLE_URL,
    derive_async_url,
    derive_sync_url,
    driver_name,
    ensure_async,
    ensure_sync,
    is_sqlite_memory,
    mask_url,
    parse_url,
    redact,
)

PASSWORD = "p@ss:w/rd%"
ENCODED = quote_plus(PASSWORD)  # p%40ss%3Aw%2Frd%25
QUERY_PASSWORD = "s3cr3t"
SECRET_URL = f"postgresql://app:{ENCODED}@db.example:5432/shop?password={QUERY_PASSWORD}"
# Every form in which these passwords could leak.
SECRET_FORMS = {
    PASSWORD,
    ENCODED,
    quote(PASSWORD),
    quote(PASSWORD, safe=""),
    QUERY_PASSWORD,
}


def assert_no_secret(text: str) -> None:
    leaked = sorted(form for form in SECRET_FORMS if form in text)
    assert not leaked, f"secret leaked: {text!r}"


def error_texts(exc: BaseException) -> str:
    """The text of an exception and everything chained to it (cause and context)."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# -- parse_url -------------------------------------------------------------------------


def test_parse_url_returns_the_url_with_its_password_decoded() -> None:
    url = parse_url(SECRET_URL, setting="DATABASE_URL")

    assert url.password == PASSWORD
    assert (url.host, url.port, url.database) == ("db.example", 5432, "shop")


def test_postgres_scheme_is_an_alias_of_postgresql() -> None:
    assert parse_url("postgres://u:pw@h/db", setting="X").drivername == "postgresql"
    assert parse_url("postgres+asyncpg://u@h/db", setting="X").drivername == "postgresql+asyncpg"


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_url("  sqlite:///a.db\n", setting="X").database == "a.db"


@pytest.mark.parametrize("raw", ["garbage", "://nohost", "", "   ", "localhost:5432/db"])
def test_unparseable_url_is_rejected_with_the_expected_shape(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as info:
        parse_url(raw, setting="DATABASE_URL")

    assert "dialect+driver://user:password@host:port/database" in str(info.value)


def test_unescaped_at_in_password_is_rejected_with_an_escaping_hint() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("postgresql://app:p@ss@db.example/shop", setting="DATABASE_URL")

    message = str(info.value)
    assert "DATABASE_URL" in message
    assert "percent-encode" in message
    assert "'%40'" in message
    assert "quote_plus" in message
    assert "ss@db" not in error_texts(info.value)  # the password's tail


def test_unescaped_at_that_breaks_the_port_hides_the_password() -> None:
    # SQLAlchemy reads "rd@db.example:5432" as the port and fails on int().
    with pytest.raises(ConfigurationError) as info:
        parse_url("postgresql://app:pa@ss:w0rd@db.example:5432/shop", setting="DATABASE_URL")

    assert "quote_plus" in str(info.value)
    assert "w0rd" not in error_texts(info.value)
    assert "ss:" not in error_texts(info.value)


@pytest.mark.parametrize("raw", ["nosuchdb://u:pw@h/db", "oracle+nosuchdriver://u:pw@h/db"])
def test_unknown_scheme_is_rejected_listing_supported_backends(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown database scheme") as info:
        parse_url(raw, setting="DATABASE_URL")

    assert "sqlite" in str(info.value)
    assert "postgresql" in str(info.value)


def test_unknown_driver_of_a_supported_backend_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="unknown postgresql driver 'nosuch'"):
        parse_url("postgresql+nosuch://u:pw@h/db", setting="DATABASE_URL")


@pytest.mark.parametrize("raw", ["mysql://u:pw@h/db", "mssql+pyodbc://u:pw@h/db"])
def test_unsupported_backend_is_rejected_listing_supported_backends(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="does not support") as info:
        parse_url(raw, setting="DATABASE_URL")

    assert "sqlite" in str(info.value)
    assert "postgresql" in str(info.value)
    assert "pw" not in str(info.value)


def test_sqlite_url_with_a_server_part_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="SQLite") as info:
        parse_url("sqlite://user:hunter2@localhost/app.db", setting="DATABASE_URL")

    assert "hunter2" not in error_texts(info.value)


def test_parse_errors_never_contain_the_password() -> None:
    bad = [
        f"mysql://app:{ENCODED}@h/db?password={QUERY_PASSWORD}",
        f"nosuchdb://app:{ENCODED}@h/db?password={QUERY_PASSWORD}",
        f"postgresql://app:{PASSWORD}@h/db?password={QUERY_PASSWORD}",
        f"postgresql://app:{ENCODED}@h:port/db?password={QUERY_PASSWORD}",
        f"sqlite://app:{ENCODED}@h/db?password={QUERY_PASSWORD}",
    ]
    for raw in bad:
        with pytest.raises(ConfigurationError) as info:
            parse_url(raw, setting="DATABASE_URL")
        assert_no_secret(error_texts(info.value))


# The password is "Tr0ub@dor/Secret" (and the like), written without percent-encoding:
# SQLAlchemy ends it at its first '@' and reads the rest as host, path or query.
HOSTILE_FRAGMENTS = ("Tr0ub", "dor", "Secret")
HOSTILE_URLS = [
    pytest.param("postgresql://app:Tr0ub@dor/Secret@db:5432/app", id="at-then-slash"),
    pytest.param("postgresql://app:Tr0ub@dor?Secret@db:5432/app", id="at-then-question"),
    pytest.param("postgresql://app:Tr0ub@dor#Secret@db:5432/app", id="at-then-hash"),
    pytest.param("postgresql://app:Tr0ub@dor@Secret@db:5432/app", id="several-at"),
    pytest.param("postgresql+asyncpg://app:Tr0ub@dor/Secret@db/app", id="async"),
    pytest.param("postgresql://app:Tr0ub@dor/Secret@db/app?sslmode=disable", id="query"),
    pytest.param("postgresql://:Tr0ub@dor/Secret@db/app", id="no-user"),
    pytest.param("postgresql://app@Tr0ub:dor/Secret@db/app", id="at-in-user"),
    pytest.param("postgresql://app:Tr0ub/dor?Secret@db/app", id="slash-and-question"),
    pytest.param("postgresql://app:Tr0ub#dorSecret@db/app", id="hash"),
    # No user, an '@' in the query: SQLAlchemy reads "db" as the user, the rest as
    # the password, and the query password's tail as the host.
    pytest.param("postgresql://db:5432/app?password=Tr0ub@dorSecret", id="at-in-query"),
]


def assert_no_fragment(text: str) -> None:
    leaked = [fragment for fragment in HOSTILE_FRAGMENTS if fragment in text]
    assert not leaked, f"password fragment leaked: {text!r}"


@pytest.mark.parametrize("raw", HOSTILE_URLS)
def test_an_unescaped_at_anywhere_after_the_user_is_rejected(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(raw, setting="DATABASE_URL")

    message = str(info.value)
    assert "DATABASE_URL" in message
    assert "'%40'" in message
    assert "quote_plus" in message
    assert_no_fragment(error_texts(info.value))


@pytest.mark.parametrize("raw", HOSTILE_URLS)
def test_mask_url_shows_no_part_of_an_unescaped_password(raw: str) -> None:
    masked = mask_url(raw)

    assert_no_fragment(masked)
    assert masked == UNPARSEABLE_URL or "db" in masked


def test_mask_url_masks_an_unescaped_password_only_where_it_cannot_be_misread() -> None:
    # Every '@' before the first '/': the password runs to the last one.
    assert mask_url("postgresql://app:Tr0ub@dor@db:5432/app?password=Q9") == (
        "postgresql://app:***@db:5432/app?password=***"
    )
    # An '@' after it: the password could end at any of them; nothing is shown.
    assert mask_url("postgresql://app:Tr0ub@dor/Secret@db:5432/app") == UNPARSEABLE_URL


@pytest.mark.parametrize(
    ("raw", "password"),
    [
        ("postgresql://app:Tr0ub%40dor%2FSecret@db:5432/app", "Tr0ub@dor/Secret"),
        ("postgresql://app:Tr0ub%40dor%3FSecret%23x@db/app", "Tr0ub@dor?Secret#x"),
        ("postgresql://app:pa%2Fss@db/app", "pa/ss"),
        ("postgresql://db/app?application_name=a@b", None),  # no user: no password to split
    ],
)
def test_escaped_or_unambiguous_urls_are_accepted(raw: str, password: str | None) -> None:
    url = parse_url(raw, setting="DATABASE_URL")

    assert url.password == password
    assert url.host == "db"
    assert_no_fragment(mask_url(url))


def test_sqlite_paths_may_hold_an_at() -> None:
    assert parse_url("sqlite:////srv/a@b/app@1.db", setting="X").database == "/srv/a@b/app@1.db"


def test_a_query_password_is_still_masked() -> None:
    url = parse_url("postgresql://app@db/app?password=Tr0ub%40dor", setting="DATABASE_URL")

    assert url.query["password"] == "Tr0ub@dor"
    assert mask_url(url) == "postgresql://app@db/app?password=***"


# -- derivation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "sync", "async_"),
    [
        ("sqlite:///a.db", "sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite+pysqlite:///a.db", "sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite+aiosqlite:///a.db", "sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite://", "sqlite://", "sqlite+aiosqlite://"),
        (
            "postgresql://u:pw@h:5433/db",
            "postgresql+psycopg://u:pw@h:5433/db",
            "postgresql+asyncpg://u:pw@h:5433/db",
        ),
        (
            "postgres://u:pw@h/db",
            "postgresql+psycopg://u:pw@h/db",
            "postgresql+asyncpg://u:pw@h/db",
        ),
        (
            "postgresql+psycopg2://u:pw@h/db",
            "postgresql+psycopg://u:pw@h/db",
            "postgresql+asyncpg://u:pw@h/db",
        ),
        (
            "postgresql+psycopg://u:pw@h/db",
            "postgresql+psycopg://u:pw@h/db",
            "postgresql+asyncpg://u:pw@h/db",
        ),
        (
            "postgresql+asyncpg://u:pw@h/db",
            "postgresql+psycopg://u:pw@h/db",
            "postgresql+asyncpg://u:pw@h/db",
        ),
    ],
)
def test_derivation(given: str, sync: str, async_: str) -> None:
    url = make_url(given)

    assert derive_sync_url(url).render_as_string(hide_password=False) == sync
    assert derive_async_url(url).render_as_string(hide_password=False) == async_


def test_derivation_keeps_every_part_but_the_scheme() -> None:
    url = make_url(f"postgresql+asyncpg://app:{ENCODED}@db.example:6543/shop?sslmode=require")

    sync = derive_sync_url(url)
    back = derive_async_url(sync)

    assert sync.drivername == "postgresql+psycopg"
    for derived in (sync, back):
        assert derived.username == "app"
        assert derived.password == PASSWORD
        assert (derived.host, derived.port, derived.database) == ("db.example", 6543, "shop")
        assert dict(derived.query) == {"sslmode": "require"}
    assert back == url


def test_sqlite_derivation_keeps_uri_query() -> None:
    url = make_url("sqlite:///file:app.db?mode=ro&uri=true")

    assert dict(derive_async_url(url).query) == {"mode": "ro", "uri": "true"}


def test_explicit_other_sync_driver_is_kept() -> None:
    url = make_url("postgresql+pg8000://u@h/db")

    assert derive_sync_url(url) == url
    assert derive_async_url(url).drivername == "postgresql+asyncpg"


def test_derivation_rejects_unsupported_backend() -> None:
    with pytest.raises(ConfigurationError, match="mysql"):
        derive_async_url(make_url("mysql://u@h/db"))


# -- ensure_sync / ensure_async --------------------------------------------------------


def test_sync_driver_where_async_is_required_is_rejected_with_an_example() -> None:
    url = make_url(f"postgresql+psycopg://app:{ENCODED}@h/db?password={QUERY_PASSWORD}")

    with pytest.raises(ConfigurationError) as info:
        ensure_async(url, setting="DATABASE_ASYNC_URL")

    message = str(info.value)
    assert message.startswith("DATABASE_ASYNC_URL")
    assert "synchronous driver 'psycopg'" in message
    assert "postgresql+asyncpg://" in message
    assert_no_secret(error_texts(info.value))


def test_async_driver_where_sync_is_required_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="async driver 'aiosqlite'") as info:
        ensure_sync(make_url("sqlite+aiosqlite:///a.db"), setting="DATABASE_URL")

    assert "sqlite:///a.db" in str(info.value)


@pytest.mark.parametrize(
    "raw", ["sqlite:///a.db", "postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg2://"]
)
def test_sync_urls_pass_ensure_sync_only(raw: str) -> None:
    url = make_url(raw)

    ensure_sync(url, setting="DATABASE_URL")
    with pytest.raises(ConfigurationError):
        ensure_async(url, setting="DATABASE_ASYNC_URL")


@pytest.mark.parametrize(
    "raw",
    ["sqlite+aiosqlite:///a.db", "postgresql+asyncpg://u@h/db", "postgresql+psycopg_async://"],
)
def test_async_urls_pass_ensure_async_only(raw: str) -> None:
    url = make_url(raw)

    ensure_async(url, setting="DATABASE_ASYNC_URL")
    with pytest.raises(ConfigurationError):
        ensure_sync(url, setting="DATABASE_URL")


# -- mask_url and redact ---------------------------------------------------------------


def test_mask_url_hides_user_and_query_passwords() -> None:
    masked = mask_url(make_url(SECRET_URL))

    assert masked == "postgresql://app:***@db.example:5432/shop?password=***"
    assert_no_secret(masked)


def test_mask_url_accepts_strings() -> None:
    assert mask_url(SECRET_URL) == "postgresql://app:***@db.example:5432/shop?password=***"


@pytest.mark.parametrize("key", ["password", "PASSWORD", "sslpassword", "Db_Password"])
def test_mask_url_hides_any_password_query_key(key: str) -> None:
    masked = mask_url(f"postgresql://u@h/db?{key}={QUERY_PASSWORD}&sslmode=require")

    assert f"{key}=***" in masked
    assert "sslmode=require" in masked
    assert_no_secret(masked)


def test_mask_url_keeps_the_rest_of_the_url() -> None:
    assert mask_url("sqlite:///./app.db") == "sqlite:///./app.db"
    assert mask_url("postgresql+asyncpg://u@h:1/db?a=1&a=2") == (
        "postgresql+asyncpg://u@h:1/db?a=1&a=2"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "not a url",
        PASSWORD,
        QUERY_PASSWORD,
        f"postgresql://app:{PASSWORD}@h:port/db",
        "",
    ],
)
def test_mask_url_never_echoes_unparseable_text(raw: str) -> None:
    assert mask_url(raw) == UNPARSEABLE_URL


def test_mask_url_hides_the_tail_of_an_unescaped_password() -> None:
    masked = mask_url("postgresql://app:pa@ss@db.example/shop")

    assert masked == "postgresql://app:***@db.example/shop"


def test_redact_scrubs_every_form_of_the_passwords() -> None:
    url = make_url(SECRET_URL)
    message = (
        f'connection failed: password "{PASSWORD}" rejected for app '
        f"(dsn: postgresql://app:{ENCODED}@db.example/shop, also {quote(PASSWORD)}, "
        f"{quote(PASSWORD, safe='')}) password={QUERY_PASSWORD}"
    )

    scrubbed = redact(message, url)

    assert_no_secret(scrubbed)
    assert scrubbed.startswith('connection failed: password "***" rejected for app')
    assert "db.example/shop" in scrubbed


def test_redact_handles_several_urls_and_ignores_missing_passwords() -> None:
    first = make_url("postgresql://a:first-secret@h/db")
    second = make_url("postgresql+asyncpg://b:second-secret@h/db")
    no_password = make_url("sqlite:///a.db")

    scrubbed = redact("first-secret and second-secret", first, no_password, None, second)

    assert scrubbed == "*** and ***"
    assert redact("nothing to hide", no_password, None) == "nothing to hide"
    assert redact("x", make_url("postgresql://u:@h/db")) == "x"


# -- is_sqlite_memory and driver_name --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "memory"),
    [
        ("sqlite://", True),
        ("sqlite:///:memory:", True),
        ("sqlite+aiosqlite://", True),
        ("sqlite+aiosqlite:///:memory:", True),
        ("sqlite:///file:shared?mode=memory&cache=shared&uri=true", True),
        ("sqlite:///file::memory:?uri=true", True),
        ("sqlite:///app.db", False),
        ("sqlite+aiosqlite:////tmp/app.db", False),
        ("sqlite:///file:app.db?mode=ro&uri=true", False),
        ("postgresql://u@h/db", False),
    ],
)
def test_is_sqlite_memory(raw: str, memory: bool) -> None:
    assert is_sqlite_memory(make_url(raw)) is memory


def test_is_sqlite_memory_reads_options_inside_the_database_name() -> None:
    url = URL.create("sqlite", database="file:x?mode=memory&cache=shared")

    assert is_sqlite_memory(url)


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("sqlite:///a.db", "pysqlite"),
        ("sqlite+aiosqlite:///a.db", "aiosqlite"),
        ("postgresql+psycopg://u@h/db", "psycopg"),
        ("postgresql+asyncpg://u@h/db", "asyncpg"),
        ("postgres+asyncpg://u@h/db", "asyncpg"),
    ],
)
def test_driver_name(raw: str, driver: str) -> None:
    assert driver_name(make_url(raw)) == driver
