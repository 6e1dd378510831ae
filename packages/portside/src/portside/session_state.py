"""Which SQL may leave session state on a PostgreSQL connection after its transaction.

A pooled connection is reset (:data:`portside.adapters.postgresql.RESET_SESSION_STATE`)
only once a statement run on it may have changed what outlives a transaction:
``SET`` (not ``SET LOCAL``), ``RESET``, ``SET ROLE`` / ``SET SESSION
AUTHORIZATION``, ``set_config(..., false)``, ``LISTEN``, ``PREPARE``, session
advisory locks, temporary tables, ``DECLARE ... WITH HOLD``, ``DO`` and ``CALL``.

Text cannot see inside a function, so the check is conservative: a statement that
calls a function not known to be harmless (:data:`HARMLESS_FUNCTIONS`: aggregates,
string, number, date, JSON and array functions, ``set_config(..., true)``,
transaction-level advisory locks...) counts as a change, and so does a statement
whose first word is not one of the known kinds. What it cannot see at all is a
change made where no statement names it: a trigger, a rule, a view or a column
default that calls a function doing ``SET``, or SQL sent through the driver's own
connection, bypassing SQLAlchemy (see docs/production.md).

The answer for a statement text is cached: the ORM sends the same few texts again
and again, so the check costs a dictionary look-up.
"""

from __future__ import annotations

import functools
import re

__all__ = ["HARMLESS_FUNCTIONS", "may_change_session_state"]

# Comments, string literals (standard, E'', dollar-quoted) and quoted identifiers:
# their text is not SQL. Dollar quotes first: their body may hold anything.
_NOT_SQL = re.compile(
    r"""
      \$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$   # $$...$$, $tag$...$tag$
    | --[^\n]*                                      # -- comment
    | /\*.*?\*/                                     # /* comment */
    | [Ee]'(?:[^'\\]|\\.|'')*'                      # E'...'
    | '(?:[^']|'')*'                                # '...'
    | "(?:[^"]|"")*"                                # "identifier"
    """,
    re.VERBOSE | re.DOTALL,
)
# A name (maybe schema-qualified) followed by "(", and what comes just before it.
_CALL = re.compile(r"(::\s*|\b\w+\s+)?\b([A-Za-z_][\w$]*(?:\s*\.\s*[A-Za-z_][\w$]*)*)\s*\(")
_FIRST_WORDS = re.compile(r"\s*([A-Za-z]+)(?:\s+([A-Za-z]+))?")
_WORD = re.compile(r"[A-Za-z_]\w*")
_SET_CONFIG_LOCAL = re.compile(r"\bset_config\s*\([^()]*,\s*true\s*\)", re.IGNORECASE)

#: Statements that cannot leave state behind (beyond the functions they call).
_PLAIN = frozenset(
    {
        "select", "insert", "update", "delete", "with", "values", "table", "merge",
        "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release",
        "show", "explain", "close", "fetch", "move", "unlisten", "discard", "deallocate",
        "lock", "notify", "truncate", "analyze", "vacuum", "copy", "checkpoint",
        "comment", "grant", "revoke", "drop", "alter", "refresh", "reindex", "cluster",
        "create", "declare",
    }
)  # fmt: skip
#: ``SET`` forms that end with the transaction.
_SET_LOCAL = frozenset({"local", "transaction", "constraints"})
#: Words that mark a temporary object or session-lived state anywhere in a statement.
_STATEFUL_WORDS = frozenset({"temp", "temporary", "pg_temp", "hold"})

#: Words followed by "(" that are SQL syntax, not a function call.
_SYNTAX = frozenset(
    {
        "in", "exists", "any", "all", "some", "values", "cast", "over", "filter", "within",
        "as", "on", "using", "from", "join", "select", "where", "and", "or", "not", "row",
        "array", "case", "when", "then", "else", "by", "set", "lateral", "extract",
        "position", "substring", "overlay", "trim", "distinct", "having", "conflict",
        "returning", "is", "like", "ilike", "similar", "between", "into", "table",
        "update", "insert", "default", "do", "limit", "offset", "group", "order",
        "union", "intersect", "except", "with", "recursive", "materialized", "tuple",
        "interval", "collate", "partition", "rows", "range", "groups", "unnest",
    }
)  # fmt: skip

#: Built-in functions that change no session state, by name (any schema).
HARMLESS_FUNCTIONS = frozenset(
    {
        # aggregates and window functions
        "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "json_agg",
        "jsonb_agg", "json_object_agg", "jsonb_object_agg", "bool_and", "bool_or",
        "every", "stddev", "variance", "percentile_cont", "percentile_disc", "mode",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
        "lead", "first_value", "last_value", "nth_value",
        # conditionals
        "coalesce", "nullif", "greatest", "least",
        # strings
        "lower", "upper", "length", "char_length", "character_length", "octet_length",
        "substr", "strpos", "ltrim", "rtrim", "btrim", "replace", "concat", "concat_ws",
        "left", "right", "lpad", "rpad", "repeat", "reverse", "split_part", "initcap",
        "format", "md5", "sha256", "encode", "decode", "regexp_replace", "regexp_match",
        "regexp_matches", "regexp_split_to_array", "starts_with", "translate", "quote_ident",
        "quote_literal", "to_char", "to_number", "to_hex", "ascii", "chr", "unaccent",
        # numbers
        "abs", "round", "floor", "ceil", "ceiling", "trunc", "mod", "power", "sqrt",
        "exp", "ln", "log", "sign", "random", "div", "width_bucket",
        # dates and times
        "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
        "date_trunc", "date_part", "date_bin", "age", "to_timestamp", "to_date",
        "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval",
        "justify_days", "justify_hours", "justify_interval", "timezone", "isfinite",
        # JSON and arrays
        "json_build_object", "jsonb_build_object", "json_build_array",
        "jsonb_build_array", "to_json", "to_jsonb", "row_to_json", "json_extract_path",
        "jsonb_extract_path", "json_extract_path_text", "jsonb_extract_path_text",
        "jsonb_set", "jsonb_insert", "jsonb_strip_nulls", "jsonb_typeof", "json_typeof",
        "jsonb_array_length", "json_array_length", "jsonb_array_elements",
        "json_array_elements", "jsonb_each", "json_each", "jsonb_object_keys",
        "jsonb_path_query", "jsonb_path_exists", "jsonb_pretty",
        "array_length", "array_position", "array_positions", "array_remove",
        "array_append", "array_prepend", "array_cat", "array_to_string",
        "string_to_array", "cardinality", "array_lower", "array_upper",
        "generate_series", "generate_subscripts",
        # full text search
        "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
        "websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline", "setweight",
        # identifiers, sequences, transaction-level locks, information
        "gen_random_uuid", "uuid_generate_v4", "nextval", "currval", "setval", "lastval",
        "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
        "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
        "current_setting", "pg_backend_pid", "version", "pg_sleep", "txid_current",
        "pg_current_xact_id", "pg_current_wal_lsn", "pg_last_wal_replay_lsn",
        "pg_is_in_recovery", "pg_get_serial_sequence", "pg_column_size",
        "pg_total_relation_size", "pg_relation_size", "has_table_privilege", "exists",
        "pg_notify", "pg_advisory_unlock_all", "pg_terminate_backend", "pg_cancel_backend",
    }
)  # fmt: skip


def _strip(sql: str) -> str:
    return _NOT_SQL.sub(" x ", sql)


@functools.lru_cache(maxsize=4096)
def may_change_session_state(sql: str) -> bool:
    """Whether ``sql`` (one or more statements) may leave session state on its connection.

    ``False`` is a promise only for what the statement text shows (see the module's
    docstring); when in doubt the answer is ``True``.
    """
    if _SET_CONFIG_LOCAL.search(sql):
        # set_config(..., true) is SET LOCAL: take those calls out before the scan.
        sql = _SET_CONFIG_LOCAL.sub(" now() ", sql)
    code = _strip(sql)
    return any(_statement_may_change(part) for part in code.split(";") if part.strip())


def _statement_may_change(statement: str) -> bool:
    first = _FIRST_WORDS.match(statement)
    if first is None:
        return True  # not a statement we can read: say yes
    word, second = first.group(1).lower(), (first.group(2) or "").lower()
    if word == "set":
        if second not in _SET_LOCAL:
            return True
    elif word not in _PLAIN:
        return True  # RESET, LISTEN, PREPARE, EXECUTE, LOAD, DO, CALL, or unknown
    words = {match.lower() for match in _WORD.findall(statement)}
    if not words.isdisjoint(_STATEFUL_WORDS):
        return True
    return any(_unknown_call(match) for match in _CALL.finditer(statement))


def _unknown_call(match: re.Match[str]) -> bool:
    before, name = match.group(1), match.group(2)
    if before is not None:
        before = before.strip().lower()
        # A type with a modifier (::numeric(10, 2), AS varchar(20)), an alias's
        # column list (AS t(a, b)), an INSERT's column list (INTO t (a, b)).
        if before in ("::", "as", "into") or before.startswith("::"):
            return False
    short = name.rsplit(".", 1)[-1].strip().lower()
    return short not in _SYNTAX and short not in HARMLESS_FUNCTIONS
