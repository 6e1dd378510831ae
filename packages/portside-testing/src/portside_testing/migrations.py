"""A template database built by the app's Alembic migrations, rebuilt only when they change.

Real apps build their schema with Alembic. Given the path of ``alembic.ini``
(``--portside-alembic-ini`` or the ``portside_alembic_config`` fixture), the
plugin keeps a template database next to the test database, ``<name>_template``,
migrated to ``head``, and clones it for each test session or xdist worker
(:mod:`portside_testing.worker_databases`). The template is reused while a hash
of the migration scripts is unchanged: the hash is stored with it (``COMMENT ON
DATABASE`` on PostgreSQL, a ``.migrations`` file next to a SQLite file); when
they change, the template is dropped and migrated again from empty.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL

from portside_testing.worker_databases import admin_connection, drop

__all__ = ["migrate_template", "migrations_hash"]

_COMMENT_PREFIX = "portside-migrations:"


def _alembic_config(ini: Path, url: URL) -> object:
    try:
        from alembic.config import Config  # noqa: PLC0415 - optional: only with migrations
    except ImportError:
        raise RuntimeError(
            f"portside was asked to build the test schema with Alembic ({ini}), but "
            "Alembic is not installed: add it to your dev dependencies."
        ) from None
    config = Config(str(ini))
    rendered = url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def migrations_hash(ini: Path) -> str:
    """A hash of the migration scripts (``script_location``, every file) of ``ini``."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - optional dependency

    config = _alembic_config(ini, URL.create("sqlite"))
    directory = Path(ScriptDirectory.from_config(config).dir)  # type: ignore[arg-type]
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(directory)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _stored_hash(url: URL) -> str | None:
    if url.get_backend_name() == "sqlite":
        marker = Path(f"{url.database}.migrations")
        exists = Path(url.database or "").exists()
        return marker.read_text().strip() if exists and marker.exists() else None
    with admin_connection(url) as connection:
        comment = connection.execute(
            text(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = :name"
            ),
            {"name": url.database},
        ).scalar()
    if comment is None or not str(comment).startswith(_COMMENT_PREFIX):
        return None
    return str(comment).removeprefix(_COMMENT_PREFIX)


def _store_hash(url: URL, value: str) -> None:
    if url.get_backend_name() == "sqlite":
        Path(f"{url.database}.migrations").write_text(value)
        return
    name = '"' + (url.database or "").replace('"', '""') + '"'
    with admin_connection(url) as connection:
        connection.execute(text(f"COMMENT ON DATABASE {name} IS '{_COMMENT_PREFIX}{value}'"))


def _create_empty(url: URL) -> None:
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        return  # the migration creates the file
    name = '"' + (url.database or "").replace('"', '""') + '"'
    with admin_connection(url) as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))


def migrate_template(ini: Path, template: URL) -> bool:
    """Make ``template`` the migrated schema of ``ini``'s scripts; True if it was (re)built.

    Call it under :func:`~portside_testing.worker_databases.exclusively`.
    """
    from alembic import command  # noqa: PLC0415 - optional dependency

    wanted = migrations_hash(ini)
    if _stored_hash(template) == wanted:
        return False
    drop(template)
    _create_empty(template)
    command.upgrade(_alembic_config(ini, template), "head")  # type: ignore[arg-type]
    _store_hash(template, wanted)
    return True
