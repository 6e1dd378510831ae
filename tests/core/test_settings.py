"""DatabaseSettings: environment, .env files, URL resolution, validation, secrets."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from portside.errors import ConfigurationError
from portside.settings import DatabaseSettings
from portside.urls import redact

PASSWORD = "p@ss:w/rd%"
ENCODED = quote_plus(PASSWORD)
QUERY_PASSWORD = "s3cr3t"
SECRET_SYNC_URL = f"postgresql://app:{ENCODED}@db.example:5432/shop?password={QUERY_PASSWORD}"
SECRET_ASYNC_URL = (
    f"postgresql+asyncpg://app:{ENCODED}@db.example:5432/shop?password={QUERY_PASSWORD}"
)
SECRET_FORMS = {PASSWORD, ENCODED, quote(PASSWORD), quote(PASSWORD, safe=""), QUERY_PASSWORD}


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


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No DATABASE_* variables and no .env file unless the test sets them."""
    for name in list(os.environ):
        if name.upper().startswith(("DATABASE_", "ANALYTICS_DATABASE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- defaults and sources --------------------------------------------------------------


def test_defaults_without_configuration() -> None:
    settings = DatabaseSettings()

    assert settings.url == "sqlite:///./portside.db"
    assert settings.async_url == "sqlite+aiosqlite:///./portside.db"
    assert settings.engines == "auto"
    assert settings.echo is False
    assert settings.hide_parameters is True
    assert settings.pool_pre_ping is True
    assert (settings.pool_size, settings.max_overflow) == (5, 10)
    assert settings.pool_recycle == 1800.0
    assert settings.startup_timeout == 30.0


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app@db.example/shop")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "20")
    monkeypatch.setenv("DATABASE_ENGINES", "sync")
    monkeypatch.setenv("DATABASE_ECHO", "true")
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "2.5")

    settings = DatabaseSettings()

    assert settings.url == "postgresql+psycopg://app@db.example/shop"
    assert settings.async_url == "postgresql+asyncpg://app@db.example/shop"
    assert settings.pool_size == 20
    assert settings.engines == "sync"
    assert settings.echo is True
    assert settings.connect_timeout == 2.5


def test_dotenv_file_in_working_directory_is_read(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "DATABASE_ASYNC_URL=sqlite+aiosqlite:///./from-dotenv.db\n"
        "DATABASE_SHUTDOWN_TIMEOUT=3\n"
        "UNRELATED_SETTING=ignored\n",
        encoding="utf-8",
    )

    settings = DatabaseSettings()

    assert settings.async_url == "sqlite+aiosqlite:///./from-dotenv.db"
    assert settings.url == "sqlite:///./from-dotenv.db"
    assert settings.shutdown_timeout == 3.0


def test_environment_wins_over_dotenv(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environment / ".env").write_text("DATABASE_POOL_SIZE=3\n", encoding="utf-8")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")

    assert DatabaseSettings().pool_size == 7


def test_other_env_prefix_for_a_second_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///./main.db")
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", "postgresql://reader@warehouse/analytics")
    monkeypatch.setenv("ANALYTICS_DATABASE_POOL_SIZE", "2")

    main = DatabaseSettings()
    analytics = DatabaseSettings(_env_prefix="ANALYTICS_DATABASE_")

    assert main.url == "sqlite:///./main.db"
    assert main.pool_size == 5
    assert analytics.url == "postgresql+psycopg://reader@warehouse/analytics"
    assert analytics.async_url == "postgresql+asyncpg://reader@warehouse/analytics"
    assert analytics.pool_size == 2


def test_errors_name_the_variables_of_the_prefix_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYTICS_DATABASE_ASYNC_URL", "postgresql+psycopg://reader@warehouse/a")

    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings(_env_prefix="ANALYTICS_DATABASE_")

    assert str(info.value).startswith("ANALYTICS_DATABASE_ASYNC_URL ")


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///./env.db")

    settings = DatabaseSettings(url="sqlite:///./kwarg.db")

    assert settings.url == "sqlite:///./kwarg.db"


def test_sqlalchemy_url_objects_are_accepted() -> None:
    settings = DatabaseSettings(url=make_url(SECRET_SYNC_URL))

    assert settings.sync_url_object.password == PASSWORD


def test_settings_are_frozen() -> None:
    settings = DatabaseSettings()

    with pytest.raises(ValidationError):
        settings.pool_size = 1


# -- URL resolution --------------------------------------------------------------------


def test_async_only_derives_sync() -> None:
    settings = DatabaseSettings(async_url="postgresql+asyncpg://app@db.example:6543/shop")

    assert settings.url == "postgresql+psycopg://app@db.example:6543/shop"
    assert settings.sync_url_object.drivername == "postgresql+psycopg"
    assert settings.async_url_object.drivername == "postgresql+asyncpg"


@pytest.mark.parametrize(
    ("given", "sync", "async_"),
    [
        ("postgres://app@h/db", "postgresql+psycopg://app@h/db", "postgresql+asyncpg://app@h/db"),
        ("postgresql://app@h/db", "postgresql+psycopg://app@h/db", "postgresql+asyncpg://app@h/db"),
        ("sqlite:///./a.db", "sqlite:///./a.db", "sqlite+aiosqlite:///./a.db"),
        ("sqlite://", "sqlite://", "sqlite+aiosqlite://"),
    ],
)
def test_sync_only_derives_async(given: str, sync: str, async_: str) -> None:
    settings = DatabaseSettings(url=given)

    assert (settings.url, settings.async_url) == (sync, async_)


def test_both_urls_given_are_kept() -> None:
    settings = DatabaseSettings(
        url="postgresql+psycopg://app@primary/shop",
        async_url="postgresql+asyncpg://app@pooler/shop",
    )

    assert settings.url == "postgresql+psycopg://app@primary/shop"
    assert settings.async_url == "postgresql+asyncpg://app@pooler/shop"


def test_unchanged_url_keeps_the_users_spelling() -> None:
    settings = DatabaseSettings(url="sqlite:///:memory:")

    assert settings.url == "sqlite:///:memory:"
    assert settings.async_url_object.database == ":memory:"


def test_resolved_settings_round_trip() -> None:
    settings = DatabaseSettings(url=SECRET_SYNC_URL, pool_size=3)

    assert DatabaseSettings(**settings.model_dump()) == settings


def test_resolved_urls_keep_the_password() -> None:
    settings = DatabaseSettings(url=SECRET_SYNC_URL)

    for url in (settings.sync_url_object, settings.async_url_object):
        assert url.password == PASSWORD
        assert url.query["password"] == QUERY_PASSWORD


def test_sync_driver_as_async_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_ASYNC_URL", "postgresql://app@db.example/shop")

    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings()

    message = str(info.value)
    assert message.startswith("DATABASE_ASYNC_URL ")
    assert "synchronous driver" in message
    assert "postgresql+asyncpg://app@db.example/shop" in message


def test_async_driver_as_sync_url_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"^DATABASE_URL .*async driver 'aiosqlite'"):
        DatabaseSettings(url="sqlite+aiosqlite:///./a.db")


def test_unknown_scheme_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL uses the unknown database scheme"):
        DatabaseSettings(url="nosuchdb://app@h/db")


def test_unsupported_backend_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="'mysql' database, which portside does not"):
        DatabaseSettings(url="mysql+pymysql://app@h/db")


def test_mismatched_backends_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="different backends") as info:
        DatabaseSettings(url="sqlite:///./a.db", async_url=SECRET_ASYNC_URL)

    assert "DATABASE_URL" in str(info.value)
    assert "DATABASE_ASYNC_URL" in str(info.value)
    assert_no_secret(error_texts(info.value))


def test_unescaped_at_in_password_is_rejected_with_escaping_hint() -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        DatabaseSettings(url="postgresql://app:p@ss@db.example/shop")

    assert "quote_plus" in str(info.value)
    assert "ss@db" not in error_texts(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://app:Tr0ub@dor/Secret@db:5432/app",
        "postgresql://app:Tr0ub@dor?Secret@db:5432/app",
        "postgresql://app:Tr0ub@dor#Secret@db:5432/app",
        "postgresql+asyncpg://app:Tr0ub@dor@Secret@db/app",
    ],
)
@pytest.mark.parametrize("variable", ["DATABASE_URL", "DATABASE_ASYNC_URL"])
def test_an_unescaped_at_before_a_slash_or_question_mark_is_rejected(
    monkeypatch: pytest.MonkeyPatch, raw: str, variable: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        DatabaseSettings()

    assert variable in str(info.value)
    for fragment in ("Tr0ub", "dor", "Secret"):
        assert fragment not in error_texts(info.value)


def test_a_percent_encoded_at_slash_and_question_mark_are_accepted() -> None:
    settings = DatabaseSettings(url="postgresql://app:Tr0ub%40dor%2FSe%3Fcret@db:5432/app")

    assert settings.sync_url_object.password == "Tr0ub@dor/Se?cret"
    for shown in (repr(settings), str(settings), settings.masked_url, settings.masked_async_url):
        assert "Tr0ub" not in shown
        assert "cret" not in shown


def test_validation_through_model_validate_keeps_our_message() -> None:
    # model_validate bypasses __init__, so pydantic's wrapper is what surfaces.
    with pytest.raises(ValidationError) as info:
        DatabaseSettings.model_validate({"async_url": SECRET_SYNC_URL})

    assert "DATABASE_ASYNC_URL" in str(info.value)
    assert "synchronous driver" in str(info.value)
    assert_no_secret(error_texts(info.value))


# -- number validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_size", -1),
        ("pool_size", 0),
        ("max_overflow", -1),
        ("pool_timeout", 0),
        ("pool_recycle", 0),
        ("pool_recycle", -5),
        ("connect_timeout", -1.0),
        ("startup_timeout", 0),
        ("shutdown_timeout", -0.1),
        ("cleanup_timeout", 0),
        ("sqlite_busy_timeout", -1),
        ("connect_timeout", float("nan")),
        ("startup_timeout", float("inf")),
        ("engines", "sometimes"),
    ],
)
def test_bad_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        DatabaseSettings(url=SECRET_SYNC_URL, **{field: value})

    assert field in str(info.value)
    assert_no_secret(error_texts(info.value))


def test_bad_value_from_environment_does_not_leak_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", SECRET_SYNC_URL)
    monkeypatch.setenv("DATABASE_POOL_SIZE", "-3")

    with pytest.raises(ValidationError, match="pool_size") as info:
        DatabaseSettings()

    assert_no_secret(error_texts(info.value))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_recycle", -1),
        ("shutdown_timeout", 0),
        ("sqlite_busy_timeout", 0),
        ("max_overflow", 0),
    ],
)
def test_meaningful_edge_values_are_accepted(field: str, value: float) -> None:
    settings = DatabaseSettings(**{field: value})

    assert getattr(settings, field) == value


# -- secrets ---------------------------------------------------------------------------


def test_repr_and_str_show_masked_urls_only() -> None:
    settings = DatabaseSettings(url=SECRET_SYNC_URL)

    for text in (repr(settings), str(settings)):
        assert_no_secret(text)
        assert "postgresql+psycopg://app:***@db.example:5432/shop?password=***" in text
        assert "postgresql+asyncpg://app:***@db.example:5432/shop?password=***" in text
        assert "pool_size=5" in text


def test_masked_properties() -> None:
    settings = DatabaseSettings(async_url=SECRET_ASYNC_URL)

    assert settings.masked_url == "postgresql+psycopg://app:***@db.example:5432/shop?password=***"
    assert settings.masked_async_url == (
        "postgresql+asyncpg://app:***@db.example:5432/shop?password=***"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"async_url": SECRET_SYNC_URL},
        {"url": SECRET_ASYNC_URL},
        {"url": SECRET_SYNC_URL.replace("postgresql", "mysql")},
        {"url": SECRET_SYNC_URL.replace("postgresql", "nosuchdb")},
        {"url": SECRET_SYNC_URL.replace(ENCODED, PASSWORD)},
        {"url": SECRET_SYNC_URL.replace("5432", "port")},
        {"url": SECRET_SYNC_URL, "async_url": "sqlite+aiosqlite://"},
    ],
)
def test_configuration_errors_never_contain_the_password(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        DatabaseSettings(**overrides)

    assert_no_secret(error_texts(info.value))


def test_redact_scrubs_driver_messages_with_the_settings_urls() -> None:
    settings = DatabaseSettings(url=SECRET_SYNC_URL)
    driver_message = (
        f'FATAL: password authentication failed (password "{PASSWORD}", '
        f"conninfo postgresql://app:{ENCODED}@db.example/shop?password={QUERY_PASSWORD})"
    )

    scrubbed = redact(driver_message, settings.sync_url_object, settings.async_url_object)

    assert_no_secret(scrubbed)
    assert "password authentication failed" in scrubbed
