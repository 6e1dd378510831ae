"""What a database error means, whichever driver reported it."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

__all__ = ["is_transient_at_startup"]

# SQLSTATE class of authentication failures: retrying a wrong password never helps.
_AUTHENTICATION_FAILED = "28"


def is_transient_at_startup(exc: BaseException) -> bool:
    """Whether a startup check might pass if retried (the server may be coming up).

    Anything else (a bad argument, a bug, a refused password) fails at once
    instead of burning the whole startup timeout.
    """
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return not (isinstance(sqlstate, str) and sqlstate.startswith(_AUTHENTICATION_FAILED))
    return isinstance(exc, OSError | TimeoutError)
