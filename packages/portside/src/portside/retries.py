"""Running a unit of work again when the database says a concurrent one won.

Opt-in, per unit or per route: a :class:`RetryPolicy` (or ``retries=N``, meaning
``RetryPolicy(attempts=N + 1)``) reruns the whole unit of work when it failed with a
serialization failure (SQLSTATE 40001), a deadlock (40P01) or a SQLite writer-turn
deadlock (:func:`portside.failures.is_retryable_conflict`), after a rollback and an
exponentially growing, randomly jittered pause. Nothing else is retried: not a
constraint violation, not a timeout, not a lost connection.

A web request is retried only before its response started, and only if its body
fit the replay buffer (:attr:`RetryPolicy.max_body`). When attempts run out, the
client gets 409 with ``Retry-After`` (never 500).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from portside.failures import is_retryable_conflict

__all__ = ["Retries", "RetryPolicy"]

#: Request bodies up to this size (bytes) are buffered so a retry can replay them.
DEFAULT_MAX_BODY = 1024 * 1024

#: Why a unit of work ran again: it lost a race, or its replica failed.
RetryReason = Literal["conflict", "replica"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to rerun a unit of work that lost a race.

    ``attempts`` counts the first run; before attempt *n* + 1 the unit waits a
    random time between 0 and ``min(max_backoff, backoff * 2 ** (n - 1))`` seconds
    ("full jitter": racing units do not collide again in lockstep). A web request
    whose body is larger than ``max_body`` bytes runs only once.
    """

    attempts: int = 3
    backoff: float = 0.01
    max_backoff: float = 1.0
    max_body: int = DEFAULT_MAX_BODY

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy backoffs must not be negative")

    @classmethod
    def of(cls, retries: Retries) -> RetryPolicy | None:
        """The policy for ``retries``: a policy, a number of retries, or ``None``/0: none."""
        if retries is None or isinstance(retries, RetryPolicy):
            return retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a RetryPolicy or a count >= 0, got {retries!r}")
        return cls(attempts=retries + 1) if retries else None

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt``, which failed with ``exc``, is run again."""
        return attempt < self.attempts and is_retryable_conflict(exc)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography


#: What ``retries=`` accepts: a policy, a number of retries (0: none), or ``None``.
Retries = RetryPolicy | int | None
