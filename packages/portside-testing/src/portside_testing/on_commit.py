"""Capturing after-commit callbacks in tests (Django's ``captureOnCommitCallbacks``).

In a test, the outer transaction never really commits, but a unit of work whose
session commits inside it has committed as far as the code under test can tell,
so its after-commit callbacks would run. :func:`capture_on_commit` collects them
instead, so that a test can assert which callbacks a request registered, and run
them when it chooses::

    with capture_on_commit() as callbacks:
        response = await client.post("/signup", json={...})
    assert len(callbacks) == 1
    await callbacks.run()  # e.g. the welcome email, now

The ``portside_on_commit`` fixture is the same for a whole test.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from portside import hooks
from portside.hooks import Callback

__all__ = ["CapturedCallbacks", "capture_on_commit"]


class CapturedCallbacks(list[Callback]):
    """The after-commit callbacks units of work registered, in order, not yet run."""

    async def run(self) -> None:
        """Run each captured callback (awaiting async ones) and forget it; errors raise."""
        while self:
            result = self.pop(0)()
            if inspect.isawaitable(result):
                await result

    @property
    def names(self) -> list[str]:
        """The callbacks' qualified names, for assertions."""
        return [getattr(c, "__qualname__", repr(c)) for c in self]


@contextmanager
def capture_on_commit() -> Iterator[CapturedCallbacks]:
    """Collect, instead of running, the after-commit callbacks of units that commit.

    Captures across tasks and threads (the app's requests run elsewhere) while the
    block runs; the list fills as units commit. After-rollback callbacks still run.
    """
    captured = CapturedCallbacks()
    with hooks.capture(captured):
        yield captured
