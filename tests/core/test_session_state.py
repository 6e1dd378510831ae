"""Which statements make portside reset a PostgreSQL connection before its next use.

A statement wrongly judged harmless would let its session state reach the next
request (tests/production/test_checkout_shortcuts.py shows the reset happening on
a real server); one wrongly judged a change costs a round trip. The ORM's own
statements must be harmless, or every request would pay for a reset.
"""

from __future__ import annotations

import pytest

from portside.session_state import may_change_session_state

CHANGES = [
    "SET search_path = elsewhere, public",
    "set statement_timeout to 1000",
    "SET SESSION statement_timeout = 5",
    "SET ROLE app_reader",
    "SET SESSION AUTHORIZATION other",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "RESET search_path",
    "RESET ALL",
    "SELECT set_config('search_path', 'x', false)",
    "SELECT set_config('app.user', $1, $2)",
    "SELECT 1; SET search_path = x",
    "LISTEN jobs",
    "PREPARE q AS SELECT 1",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_try_advisory_lock(1, 2)",
    "CREATE TEMP TABLE t (id int)",
    "CREATE TEMPORARY TABLE t AS SELECT 1",
    "SELECT * INTO TEMP t FROM items",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "DO $$BEGIN PERFORM 1; END$$",
    "CALL refresh_things()",
    "SELECT my_function()",
    "SELECT app.audit(1)",
    'SELECT "MixedCase"(1)',
    "SELECT lower(name) FROM t WHERE app.check(id)",
    "LOAD 'auto_explain'",
    "(SELECT 1) UNION (SELECT 2)",
]

HARMLESS = [
    "SELECT 1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET LOCAL statement_timeout = 100",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET CONSTRAINTS ALL DEFERRED",
    "SELECT set_config('statement_timeout', '19999', true), "
    "set_config('lock_timeout', '19999', true)",
    "SELECT set_config('app.user_id', $1, true)",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT bench_item.id, bench_item.name, bench_item.price FROM bench_item "
    "WHERE bench_item.id = $1::INTEGER",
    "INSERT INTO bench_item (name, price) VALUES ($1::VARCHAR, $2::FLOAT) RETURNING bench_item.id",
    "INSERT INTO restaurant (name, cuisine) VALUES (%(name)s::VARCHAR, %(cuisine)s::VARCHAR) "
    "RETURNING restaurant.id",
    "INSERT INTO t (a, b) SELECT p0::VARCHAR, p1::NUMERIC(10, 2) FROM (VALUES ($1, $2, 0), "
    "($3, $4, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING t.id",
    "SELECT count(*) AS count_1 FROM (SELECT t.id FROM t WHERE t.id IN ($1, $2)) AS anon_1",
    "SELECT coalesce(max(t.price), 0), lower(t.name) FROM t GROUP BY lower(t.name)",
    "SELECT CAST(t.price AS VARCHAR(20)) FROM t WHERE EXISTS (SELECT 1 FROM u)",
    "UPDATE t SET name = $1 WHERE t.id = $2",
    "DELETE FROM t WHERE t.id > $1",
    "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id",
    "SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t",
    "SELECT 'SET search_path = x; my_function()' AS text",
    "SELECT 1 -- SET ROLE x\n",
    "SELECT pg_backend_pid(), current_setting('search_path'), current_user",
    "SHOW statement_timeout",
    "CLOSE ALL",
    "UNLISTEN *",
    "SELECT pg_sleep($1)",
]


@pytest.mark.parametrize("sql", CHANGES)
def test_statements_that_may_change_session_state_are_seen(sql: str) -> None:
    assert may_change_session_state(sql)


@pytest.mark.parametrize("sql", HARMLESS)
def test_statements_that_cannot_change_it_cost_no_reset(sql: str) -> None:
    assert not may_change_session_state(sql)
