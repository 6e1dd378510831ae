"""What the tests do to the PostgreSQL server behind the app's back."""

from __future__ import annotations

import psycopg
import restaurants.models  # noqa: F401 - registers the example's tables
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from tests.production.pgbouncer import PgBouncer


def libpq(url: str) -> str:
    """``url`` as libpq takes it (no ``+driver``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def admin_execute(
    url: str, *statements: str, database: str = "postgres"
) -> list[tuple[object, ...]]:
    """Run ``statements`` in autocommit mode; return the last one's rows."""
    target = make_url(url).set(database=database).render_as_string(hide_password=False)
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(libpq(target), autocommit=True) as connection:
        for statement in statements:
            cursor = connection.execute(statement)  # type: ignore[arg-type]
            rows = cursor.fetchall() if cursor.description else []
    return rows


def with_application_name(url: str, name: str) -> str:
    """``url`` tagged so the app's server connections can be found in pg_stat_activity."""
    return (
        make_url(url)
        .update_query_dict({"application_name": name})
        .render_as_string(hide_password=False)
    )


def backends(url: str, application_name: str) -> list[tuple[int, str]]:
    """(pid, state) of the server connections tagged ``application_name``."""
    rows = admin_execute(
        url,
        "SELECT pid, state FROM pg_stat_activity "
        f"WHERE application_name = '{application_name}' AND pid <> pg_backend_pid()",
    )
    return [(int(str(pid)), str(state)) for pid, state in rows]


def terminate(url: str, application_name: str) -> int:
    """Kill every server connection tagged ``application_name``; how many were killed."""
    rows = admin_execute(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE application_name = '{application_name}' AND pid <> pg_backend_pid()",
    )
    return int(str(rows[0][0]))


def database_name(url: str) -> str:
    name = make_url(url).database
    assert name is not None
    return name


def through(bouncer: PgBouncer, url: str) -> str:
    """``url``'s database reached through ``bouncer``."""
    return bouncer.url(database_name(url))


def drop_example_tables(url: str) -> None:
    """Drop the example's tables, so the app's own startup has to create them."""
    engine = create_engine(make_url(libpq(url)).set(drivername="postgresql+psycopg"))
    try:
        SQLModel.metadata.drop_all(engine)
    finally:
        engine.dispose()


def create_example_tables(url: str) -> None:
    """Create the example's tables up front, as a deployment's migrations would.

    Several workers starting at once each run the example's ``create_all``, which
    races on a fresh database (two CREATE TABLEs of the same name).
    """
    engine = create_engine(make_url(libpq(url)).set(drivername="postgresql+psycopg"))
    try:
        SQLModel.metadata.create_all(engine)
    finally:
        engine.dispose()
