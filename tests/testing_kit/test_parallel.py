"""pytest-xdist and Alembic: the plugin driving real pytest runs (pytester, ``-n 2``).

Each worker gets its own database cloned from the template (``<name>_gw0``...),
dropped at the end; with ``--portside-alembic-ini`` the template is the migrated
schema, built once and reused until the migrations change. On PostgreSQL each
test makes a database of its own to be the template: PostgreSQL refuses to
clone a database anyone else is connected to, and other suites use ``test``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

pytest_plugins = ["pytester"]

APP = """
import os

import pytest
from fastapi import FastAPI
from sqlalchemy import Column, Integer, MetaData, Table, func, insert
from sqlmodel import select

import portside_fastapi
from portside_fastapi import AsyncSessionDep, SessionDep

metadata = MetaData()
rows = Table("parallel_row", metadata, Column("id", Integer, primary_key=True))
COUNT = select(func.count()).select_from(rows)


@pytest.fixture
def portside_metadata():
    return metadata


def create_app():
    app = FastAPI()
    portside_fastapi.install(app)

    @app.post("/rows")
    async def add(session: AsyncSessionDep) -> None:
        await session.exec(insert(rows))

    @app.get("/rows")
    def count(session: SessionDep) -> int:
        return session.exec(COUNT).one()

    return app


@pytest.mark.parametrize("n", range({count}))
def test_each_test_sees_only_its_own_rows(n, portside_sync_client, portside_database_url):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        assert portside_database_url.split("?")[0].rsplit("/", 1)[1].split(".")[0].endswith(
            "_" + worker
        )
    with portside_sync_client(create_app()) as client:
        assert client.get("/rows").json() == 0
        client.post("/rows")
        client.post("/rows")
        assert client.get("/rows").json() == 2
"""

MIGRATED_APP = """
import pytest
from fastapi import FastAPI
from sqlalchemy import MetaData, text

import portside_fastapi
from portside_fastapi import SessionDep


@pytest.fixture
def portside_metadata():
    return MetaData()  # the schema comes from the migrations


def create_app():
    app = FastAPI()
    portside_fastapi.install(app)

    @app.post("/users")
    def add(session: SessionDep) -> None:
        session.exec(text("INSERT INTO account (name, {column}) VALUES ('ada', 'x')"))

    @app.get("/users")
    def count(session: SessionDep) -> int:
        return session.exec(text("SELECT count(*) FROM account")).scalar_one()

    return app


@pytest.mark.parametrize("n", range(4))
def test_the_migrated_schema(n, portside_sync_client):
    with portside_sync_client(create_app()) as client:
        assert client.get("/users").json() == 0
        client.post("/users")
        assert client.get("/users").json() == 1
"""

ENV_PY = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = engine_from_config(
    config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool
)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}


def upgrade():
    {body}
"""

REVISIONS = [
    (
        "0001",
        None,
        "op.create_table('account', sa.Column('id', sa.Integer, primary_key=True), "
        "sa.Column('name', sa.String(50), nullable=False))",
    ),
    ("0002", "0001", "op.add_column('account', sa.Column('email', sa.String(100)))"),
    ("0003", "0002", "op.add_column('account', sa.Column('nickname', sa.String(100)))"),
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def template_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nobody else uses, to be the template (a file, or a new PostgreSQL database)."""
    if request.param == "sqlite":
        (tmp_path / "db").mkdir()
        yield f"sqlite:///{tmp_path / 'db' / 'app.db'}"
        return
    server = make_url(str(request.getfixturevalue("postgresql_url")))
    name = f"portside_kit_{uuid.uuid4().hex[:8]}"
    with admin(server) as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin(server) as connection:
            for database in databases_like(connection, name):
                connection.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))


class admin:  # noqa: N801 - reads as a context manager
    def __init__(self, url: URL) -> None:
        self.engine = create_engine(
            url.set(drivername="postgresql+psycopg", database="postgres"),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.connection = self.engine.connect()
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()
        self.engine.dispose()


def databases_like(connection, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = connection.execute(
        text("SELECT datname FROM pg_database WHERE datname LIKE :p ORDER BY datname"),
        {"p": prefix + "%"},
    )
    return list(found.scalars())


def leftovers(url: str) -> list[str]:
    """The databases (or files) named after the template, beyond the template itself."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        return sorted(p.name for p in path.parent.glob(f"{path.stem}_*.db"))
    with admin(parsed) as connection:
        return [
            d for d in databases_like(connection, parsed.database or "") if d != parsed.database
        ]


def template_identity(url: str) -> object:
    """What changes when the template is rebuilt: the file's inode and mtime, the database's oid."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        stat = Path(parsed.database or "").stat()
        return (stat.st_ino, stat.st_mtime_ns)
    with admin(parsed) as connection:
        return connection.execute(
            text("SELECT oid FROM pg_database WHERE datname = :n"), {"n": parsed.database}
        ).scalar_one()


@pytest.fixture(autouse=True)
def fresh_run_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs start outside xdist, even when this suite runs under ``-n 2``.

    A worker's ``PYTEST_XDIST_*`` variables would leak into them, and the inner
    tests read ``PYTEST_XDIST_WORKER`` to know their own worker.
    """
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", *args)


def test_each_xdist_worker_gets_a_clone_dropped_at_the_end(
    pytester: pytest.Pytester, template_url: str
) -> None:
    pytester.makepyfile(test_inner=APP.replace("{count}", "12"))
    result = run(pytester, "-n", "2", "--portside-database-url", template_url)
    result.assert_outcomes(passed=12)
    assert leftovers(template_url) == []


def test_without_xdist_the_database_itself_is_used(
    pytester: pytest.Pytester, template_url: str
) -> None:
    pytester.makepyfile(test_inner=APP.replace("{count}", "3"))
    result = run(pytester, "-n", "0", "--portside-database-url", template_url)
    result.assert_outcomes(passed=3)
    assert leftovers(template_url) == []


def write_migrations(root: Path, revisions: int) -> Path:
    (root / "migrations" / "versions").mkdir(parents=True, exist_ok=True)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    for revision, down, body in REVISIONS[:revisions]:
        (root / "migrations" / "versions" / f"{revision}.py").write_text(
            REVISION.format(revision=revision, down=down, body=body)
        )
    ini = root / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    return ini


def test_the_template_is_migrated_once_and_rebuilt_when_migrations_change(
    pytester: pytest.Pytester, template_url: str
) -> None:
    ini = write_migrations(pytester.path, revisions=2)
    template = str(make_url(template_url).set(database=_template_name(template_url)))
    pytester.makepyfile(test_inner=MIGRATED_APP.replace("{column}", "email"))
    options = ["--portside-database-url", template_url, "--portside-alembic-ini", str(ini)]

    run(pytester, "-n", "2", *options).assert_outcomes(passed=4)
    built = template_identity(template)
    run(pytester, "-n", "2", *options).assert_outcomes(passed=4)
    assert template_identity(template) == built  # unchanged migrations: reused

    write_migrations(pytester.path, revisions=3)
    pytester.makepyfile(test_inner=MIGRATED_APP.replace("{column}", "nickname"))
    run(pytester, "-n", "0", *options).assert_outcomes(passed=4)
    assert template_identity(template) != built  # a new revision: rebuilt
    assert [name for name in leftovers(template_url) if "template" not in name] == []


def _template_name(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        return str(path.with_name(f"{path.stem}_template{path.suffix}"))
    return f"{parsed.database}_template"
