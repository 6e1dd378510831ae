"""The consistency token: read-your-writes across requests when reads go to replicas.

A response to a request whose unit of work committed a write, on a database with
read replicas, carries the primary's WAL position after that commit, per database,
both as a cookie (browsers send it back on their own) and as a response header
(for API clients, which send it back as the request header of the same name)::

    Set-Cookie: portside_lsn=default:0/3000148; Path=/; Max-Age=300; HttpOnly; SameSite=Lax
    portside-lsn: default:0/3000148

A read-only request carrying it reads from a replica only once that replica has
replayed past the position. The token is not a security boundary: a client can
only make its own reads go to the primary. A malformed token is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

from portside.replicas import format_lsn, parse_lsn

__all__ = ["COOKIE", "HEADER", "MAX_AGE", "format_token", "parse_token", "read_token"]

#: Name of the cookie holding the token.
COOKIE = "portside_lsn"
#: Name of the response header (and of the request header API clients send back).
HEADER = "portside-lsn"
#: Seconds the cookie lives: far longer than any replica may lag in rotation.
MAX_AGE = 300

_COOKIE_PREFIX = COOKIE.encode() + b"="
_HEADER = HEADER.encode()
#: At most this many databases are read from one token (a forged one may list more).
_MAX_ENTRIES = 16


def format_token(positions: Mapping[str, int]) -> str:
    """``positions`` (database name to WAL position) as a token: ``name:X/Y|name:X/Y``."""
    return "|".join(f"{quote(name, safe='')}:{format_lsn(lsn)}" for name, lsn in positions.items())


def parse_token(text: str) -> dict[str, int]:
    """The positions in a token; entries that do not parse are skipped, never raised."""
    positions: dict[str, int] = {}
    for entry in text.strip().strip('"').split("|")[:_MAX_ENTRIES]:
        name, colon, lsn = entry.partition(":")
        if not colon:
            continue
        try:
            position = parse_lsn(lsn)
        except ValueError:
            continue
        positions[unquote(name)] = position
    return positions


def read_token(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, int] | None:
    """The token of a request (its header, else its cookie); ``None`` without one."""
    found: dict[str, int] | None = None
    for name, value in headers:
        if name == _HEADER:
            return parse_token(value.decode("latin-1")) or None
        if name == b"cookie" and _COOKIE_PREFIX in value:
            for raw in value.split(b";"):
                part = raw.strip()
                if part.startswith(_COOKIE_PREFIX):
                    found = parse_token(part[len(_COOKIE_PREFIX) :].decode("latin-1")) or None
    return found


def token_headers(positions: Mapping[str, int]) -> list[tuple[bytes, bytes]]:
    """The response headers handing the client ``positions``."""
    token = format_token(positions).encode("latin-1")
    cookie = (
        _COOKIE_PREFIX + token + f"; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Lax".encode()
    )
    return [(b"set-cookie", cookie), (_HEADER, token)]
