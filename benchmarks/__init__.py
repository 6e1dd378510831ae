"""What each portside integration costs per request, measured side by side.

Run it from the repository root (see ``docs/benchmarks.md`` for results)::

    uv run python -m benchmarks --help
    uv run python -m benchmarks                       # the full run
    uv run python -m benchmarks --list                # the contestants

Apps run in process: the driver runs each app's lifespan, then calls
``app(scope, receive, send)`` from K asyncio tasks (no server, no HTTP client) and
checks every response's status and body. Contestants share one table
(``bench_item``: id, name, price; 1,000 rows), one pool configuration and three
routes (``GET /items/{id}``, ``GET /items?limit=20``, ``POST /items`` -> 201):

- ``<framework>-portside``: portside-fastapi / -litestar / -starlette as documented;
- ``<framework>-handwritten``: the seed's pattern (engine in the lifespan, a yield
  dependency / generator provider / ``async with`` in the handler), plus an identical
  copy of the FastAPI one (``fastapi-handwritten-copy``) forming the A/A pair;
- ``<framework>-inline``: the handler opens its own session, the least glue;
- ``<framework>-floor``: no database, the same routes and response models;
- ``fastapi-advanced-alchemy``, ``litestar-advanced-alchemy``: a real peer;
- ``sqlalchemy-raw``: the three operations with no HTTP, the database floor.

PostgreSQL comes from ``PORTSIDE_BENCH_POSTGRESQL_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the benchmark creates and drops its
own table there. SQLite is a WAL file in a temporary directory.
"""
