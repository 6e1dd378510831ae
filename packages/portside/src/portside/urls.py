"""Database URLs: validation, sync/async derivation, and keeping passwords out of text.

portside runs one database through up to two engines, a synchronous one and an
asyncio one, so it needs a URL for each; when only one is configured the other is
derived here. Every function that turns a URL into text for a human (errors, logs,
``repr``) goes through :func:`mask_url` or :func:`redact`, so a password never
leaves this module in clear text.

Supported backends and the drivers portside picks:

========== ========================= ==========================
backend    synchronous               asyncio
========== ========================= ==========================
sqlite     ``sqlite://`` (pysqlite)  ``sqlite+aiosqlite://``
postgresql ``postgresql+psycopg://`` ``postgresql+asyncpg://``
========== ========================= ==========================
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from portside.backends import backend_for, registered_backends
from portside.errors import ConfigurationError

__all__ = [
    "UNPARSEABLE_URL",
    "derive_async_url",
    "derive_sync_url",
    "driver_name",
    "ensure_async",
    "ensure_sync",
    "is_sqlite_memory",
    "mask_url",
    "parse_url",
    "redact",
    "scrub",
]

#: What :func:`mask_url` returns for text that is not a URL: the text itself could
#: be a password pasted into the wrong variable, so it is never echoed.
UNPARSEABLE_URL = "<unparseable URL>"

_MASK = "***"
_SUPPORTED_BACKENDS = ("sqlite", "postgresql")
_SHAPE = (
    "Expected the shape dialect+driver://user:password@host:port/database, e.g. "
    "postgresql+psycopg://user:password@localhost:5432/app or sqlite:///./app.db"
)
_ENCODE_HINT = (
    "percent-encode the password, e.g. '@' -> '%40', with urllib.parse.quote_plus(password)"
)
# Query parameters whose values are secrets (matched as case-insensitive substrings):
# libpq and psycopg accept ``?password=...`` and ``?sslpassword=...`` in the URL.
_SECRET_QUERY_MARKERS = ("password", "passwd", "pwd", "secret")

# What SQLAlchemy reads as ``user:password@`` right after ``scheme://``: a user name
# without ':' or '/', and a password that runs to the first '@' (any '/', '?' or '#'
# included).
_USERINFO = re.compile(r"[^:/]*(?::[^@]*)?@")

_SQLITE_SYNC = "sqlite"  # pysqlite, SQLAlchemy's default SQLite driver: written plainly
_SQLITE_ASYNC = "sqlite+aiosqlite"
_POSTGRESQL_SYNC = "postgresql+psycopg"
_POSTGRESQL_ASYNC = "postgresql+asyncpg"
# Sync drivers written down as "use the default": the bare scheme means psycopg2 on
# SQLAlchemy 2.0 but psycopg 3 on 2.1, and portside ships psycopg 3 only.
_SQLITE_DEFAULT_DRIVERS = ("", "pysqlite")
_POSTGRESQL_DEFAULT_DRIVERS = ("", "psycopg2")


def parse_url(raw: str, *, setting: str) -> URL:
    """Parse and check a database URL from configuration.

    ``setting`` names where the URL came from (e.g. ``"DATABASE_URL"``) so the
    error says what to fix. ``postgres://`` (Heroku's spelling) is accepted as
    ``postgresql://``. Surrounding whitespace (a trailing newline from a secrets
    file) is ignored.

    Raises :class:`~portside.errors.ConfigurationError`, whose message never
    contains the password, when the text is not a URL, when its user part is
    ambiguous (an unescaped ``@``, ``/``, ``?`` or ``#`` in the password, or another
    ``@`` anywhere after it), or when the backend or driver is unknown or unsupported.
    """
    text = raw.strip()
    if not text:
        raise ConfigurationError(f"{setting} is empty. {_SHAPE}.")
    if _ambiguous_userinfo(text):
        # SQLAlchemy would end the password at its first '@' and read the rest as the
        # host, the path or the query, where masking cannot know it is a secret.
        raise ConfigurationError(
            f"{setting} has an unescaped '@' (or '/', '?', '#') in its user name or "
            "password, or an '@' after its host, so the password cannot be told apart "
            f"from the host, the database or the query: {_ENCODE_HINT}, and any other "
            "'@' in the URL as '%40' too."
        )
    # The errors are raised outside the except blocks so that they carry no
    # __context__: SQLAlchemy's message may quote a piece of the password.
    url: URL | None
    try:
        url, problem = make_url(text), ""
    except ValueError:
        # Only the port is converted eagerly (int()); with an unescaped '@' in the
        # password, what SQLAlchemy takes for the port can be part of the password.
        url = None
        problem = f": its port is not a number. {_SHAPE}. If the password has an '@', "
        problem += _ENCODE_HINT
    except ArgumentError:
        url, problem = None, f". {_SHAPE}"
    if url is None:
        raise ConfigurationError(f"{setting} is not a valid database URL{problem}.")
    url = _canonical(url)
    backend = url.get_backend_name()
    try:
        url.get_dialect()  # loads SQLAlchemy's dialect class only, never the DBAPI
    except NoSuchModuleError:
        if backend in _SUPPORTED_BACKENDS:
            raise ConfigurationError(
                f"{setting} names the unknown {backend} driver {url.get_driver_name()!r}; "
                f"use {_example(backend)}."
            ) from None
        raise ConfigurationError(
            f"{setting} uses the unknown database scheme {url.drivername!r}; {_supported()}."
        ) from None
    if not _is_supported(backend):
        raise ConfigurationError(
            f"{setting} points to a {backend!r} database, which portside does not support; "
            f"{_supported()}."
        )
    if backend == "sqlite" and (url.username or url.password or url.host or url.port):
        # pysqlite would reject this only when the first connection is made.
        raise ConfigurationError(
            f"{setting} is a SQLite URL with a user, password, host or port, but SQLite "
            "opens a local file: use sqlite:///relative/path.db, sqlite:////absolute/path.db "
            "or sqlite:// for an in-memory database."
        )
    return url


def derive_sync_url(url: URL) -> URL:
    """The URL of the synchronous engine for the same database as ``url``.

    Async URLs get the sync driver (``sqlite+aiosqlite`` -> ``sqlite``,
    ``postgresql+asyncpg`` -> ``postgresql+psycopg``). A URL that is already
    synchronous is returned with its default driver spelled out: PostgreSQL's bare
    scheme and ``psycopg2`` become psycopg 3, ``sqlite+pysqlite`` becomes ``sqlite``.
    Other explicitly chosen sync drivers (e.g. ``pg8000``) are kept. Everything
    but the scheme (user, password, host, port, database, query) is unchanged.
    """
    url = _canonical(url)
    backend = _supported_backend(url)
    if (driver := _registered_driver(url, is_async=False)) is not None:
        return url if not _is_async(url) else url.set(drivername=driver)
    if backend == "sqlite":
        if _is_async(url) or _explicit_driver(url) in _SQLITE_DEFAULT_DRIVERS:
            return url.set(drivername=_SQLITE_SYNC)
        return url
    if _is_async(url) or _explicit_driver(url) in _POSTGRESQL_DEFAULT_DRIVERS:
        return url.set(drivername=_POSTGRESQL_SYNC)
    return url


def derive_async_url(url: URL) -> URL:
    """The URL of the asyncio engine for the same database as ``url``.

    Sync URLs get the async driver (``sqlite`` -> ``sqlite+aiosqlite``,
    ``postgresql[+psycopg]`` -> ``postgresql+asyncpg``); an async URL is returned
    unchanged. Everything but the scheme is kept as given, including the query
    string, so driver-specific query options may need adjusting by hand.
    """
    url = _canonical(url)
    backend = _supported_backend(url)
    if _is_async(url):
        return url
    if (driver := _registered_driver(url, is_async=True)) is not None:
        return url.set(drivername=driver)
    return url.set(drivername=_SQLITE_ASYNC if backend == "sqlite" else _POSTGRESQL_ASYNC)


def ensure_async(url: URL, *, setting: str) -> None:
    """Raise :class:`~portside.errors.ConfigurationError` unless ``url`` uses an asyncio driver.

    Catches e.g. a ``postgresql+psycopg://`` URL given as the async URL before
    SQLAlchemy fails on it with a less helpful message.
    """
    if not _is_async_checked(url, setting=setting):
        raise ConfigurationError(
            f"{setting} ({mask_url(url)}) uses the synchronous driver "
            f"{driver_name(url)!r}; an async driver is required here, "
            f"e.g. {mask_url(derive_async_url(url))}."
        )


def ensure_sync(url: URL, *, setting: str) -> None:
    """Raise :class:`~portside.errors.ConfigurationError` unless ``url`` uses a sync driver.

    Catches e.g. ``sqlite+aiosqlite://`` given as the synchronous URL.
    """
    if _is_async_checked(url, setting=setting):
        raise ConfigurationError(
            f"{setting} ({mask_url(url)}) uses the async driver "
            f"{driver_name(url)!r}; a synchronous driver is required here, "
            f"e.g. {mask_url(derive_sync_url(url))}."
        )


def mask_url(url: URL | str) -> str:
    """``url`` as text with its password, including one in the query string, as ``***``.

    Safe for logs and error messages. Never raises: text that does not parse as a
    URL becomes :data:`UNPARSEABLE_URL`, because it may be a secret itself.
    """
    if isinstance(url, str):
        maskable = _without_ambiguous_password(url)
        if maskable is None:
            return UNPARSEABLE_URL
        url = maskable
    try:
        parsed = make_url(url) if isinstance(url, str) else url
        text = parsed.set(query={}).render_as_string(hide_password=True)
        pairs = [
            f"{quote_plus(key)}={_MASK if _is_secret_key(key) else quote_plus(value)}"
            for key, value in _query_items(parsed)
        ]
    except Exception:
        return UNPARSEABLE_URL
    return f"{text}?{'&'.join(pairs)}" if pairs else text


def redact(text: str, *urls: URL | None) -> str:
    """``text`` with every password of ``urls`` replaced by ``***``.

    Meant for driver error messages, which may quote a connection string. Both the
    raw password and its percent-encoded forms are replaced, as are secrets passed
    in the query string. ``None`` URLs and empty passwords are ignored.
    """
    secrets: set[str] = set()
    for url in urls:
        if url is None:
            continue
        for secret in _secrets(url):
            secrets.update({secret, quote_plus(secret), quote(secret), quote(secret, safe="")})
    secrets.discard("")
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


_CREDENTIALS_IN_TEXT = re.compile(r"(://[^\s:/@]*:)[^\s@]*@")


def scrub(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it masked.

    For free text from drivers and exceptions, where the URLs are not known; when
    they are, :func:`redact` also catches a password that appears on its own.
    """
    return _CREDENTIALS_IN_TEXT.sub(rf"\1{_MASK}@", text)


def is_sqlite_memory(url: URL) -> bool:
    """Whether ``url`` is an in-memory SQLite database rather than a file.

    True for ``sqlite://``, ``sqlite:///:memory:`` (either driver), and SQLite URI
    databases opened with ``mode=memory`` or named ``file::memory:``; these need a
    shared connection, since every new connection would see an empty database.
    """
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    # A URI database may carry its options in the URL's query or, when the URL was
    # built in code, inside the database string itself.
    path, _, inline_query = database.partition("?")
    options = {key.lower(): value.lower() for key, value in _query_items(url)}
    for pair in inline_query.split("&"):
        key, _, value = pair.partition("=")
        options.setdefault(key.lower(), value.lower())
    if options.get("mode") == "memory":
        return True
    return path.startswith("file:") and path.removeprefix("file:") == ":memory:"


def driver_name(url: URL) -> str:
    """The DBAPI driver ``url`` resolves to, e.g. ``psycopg`` for ``postgresql://``."""
    return _canonical(url).get_driver_name()


# -- helpers --------------------------------------------------------------------------


def _ambiguous_userinfo(text: str) -> bool:
    """Whether raw URL text has a user part that other readers would split elsewhere.

    Read on the text, not on the parsed URL. SQLAlchemy ends the password at its
    first '@' and lets it hold '/', '?' and '#'; a URL reader following RFC 3986
    ends the host part at the first '/', '?' or '#' and the password at the last
    '@' before it. Where the two disagree (a second '@', or a '/', '?' or '#' before
    the '@'), a piece of the password is read as the host, the database or the
    query, and nothing tells it from them when the URL is shown.
    """
    _, separator, rest = text.partition("://")
    userinfo = _USERINFO.match(rest) if separator else None
    if userinfo is None:
        return False
    return rest.count("@") > 1 or any(char in userinfo.group() for char in "/?#")


def _without_ambiguous_password(text: str) -> str | None:
    """``text`` ready for masking, or ``None`` when no reading is safe to show.

    An ambiguous URL is masked only if every '@' lies before its first '/', '?' or
    '#': then the password runs to the last of them, as RFC 3986 reads it, and a
    placeholder is masked in its place. Otherwise it is not shown at all.
    """
    if not _ambiguous_userinfo(text):
        return text
    scheme, _, rest = text.partition("://")
    end = min((index for index in map(rest.find, "/?#") if index >= 0), default=len(rest))
    authority, after = rest[:end], rest[end:]
    if "@" in after or "@" not in authority:
        return None
    userinfo, _, host = authority.rpartition("@")
    user = re.split("[:@]", userinfo, maxsplit=1)[0]
    password = ":x" if user != userinfo else ""
    return f"{scheme}://{quote(user, safe='')}{password}@{host}{after}"


def _canonical(url: URL) -> URL:
    """``url`` with the ``postgres`` alias renamed; SQLAlchemy 1.4+ rejects it."""
    backend, plus, driver = url.drivername.partition("+")
    if backend == "postgres":
        return url.set(drivername=f"postgresql{plus}{driver}")
    return url


def _explicit_driver(url: URL) -> str:
    """The driver written in the scheme, ``""`` for a bare ``backend://``."""
    return url.drivername.partition("+")[2]


def _supported_backend(url: URL) -> str:
    backend = url.get_backend_name()
    if not _is_supported(backend):
        raise ConfigurationError(f"Cannot derive a URL for a {backend!r} database; {_supported()}.")
    return backend


def _is_supported(backend: str) -> bool:
    return backend in _SUPPORTED_BACKENDS or backend in registered_backends()


def _registered_driver(url: URL, *, is_async: bool) -> str | None:
    """The driver a third-party backend registered for derived URLs, if any."""
    backend = url.get_backend_name()
    if backend in _SUPPORTED_BACKENDS:
        return None
    registered = backend_for(backend)
    return registered.async_driver if is_async else registered.sync_driver


def _is_async(url: URL) -> bool:
    # The dialect class says whether its driver is asyncio-based without importing
    # the driver itself, so this works even where the driver is not installed.
    return bool(url.get_dialect().is_async)


def _is_async_checked(url: URL, *, setting: str) -> bool:
    try:
        return _is_async(_canonical(url))
    except NoSuchModuleError:
        raise ConfigurationError(
            f"{setting} uses the unknown database scheme {url.drivername!r}; {_supported()}."
        ) from None


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_QUERY_MARKERS)


def _query_items(url: URL) -> Iterator[tuple[str, str]]:
    """The query string as (key, value) pairs, multi-valued keys repeated, keys sorted."""
    for key in sorted(url.query):
        value = url.query[key]
        for item in (value,) if isinstance(value, str) else value:
            yield key, item


def _secrets(url: URL) -> Iterator[str]:
    if url.password is not None:
        # str(): SQLAlchemy allows password objects that render on demand.
        yield str(url.password)
    for key, value in _query_items(url):
        if _is_secret_key(key):
            yield value


def _example(backend: str) -> str:
    if backend == "sqlite":
        return f"{_SQLITE_SYNC}:///./app.db or {_SQLITE_ASYNC}:///./app.db"
    return f"{_POSTGRESQL_SYNC}://... or {_POSTGRESQL_ASYNC}://..."


def _supported() -> str:
    return (
        "portside supports sqlite (sqlite:///./app.db, sqlite+aiosqlite:///./app.db) and "
        "postgresql (postgresql+psycopg://..., postgresql+asyncpg://...)"
    )
