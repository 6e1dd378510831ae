"""Drive many requests at an app with bounded concurrency and count the outcomes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from litestar import Litestar

import portside_litestar
import portside_starlette
from portside import Lifecycle
from portside_testing.asgi import AppRunner, Response


@dataclass
class Outcome:
    """What a load run observed."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    #: (request index, status, first line of the error or body) of each failure.
    failures: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        return (
            f"requests={self.requests} errors={self.errors} "
            f"statuses={dict(sorted(self.statuses.items()))}"
        )


async def run_load(
    total: int,
    concurrency: int,
    one: Callable[[int], Awaitable[Response]],
    *,
    ok: Callable[[int, Response], bool],
) -> Outcome:
    """Call ``one(i)`` for i in range(total), ``concurrency`` at a time."""
    outcome = Outcome()
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            response = await one(index)
            outcome.requests += 1
            outcome.statuses[response.status] += 1
            if not ok(index, response):
                detail = repr(response.error) if response.error else response.text
                outcome.failures.append((index, response.status, detail.splitlines()[0][:300]))

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return outcome


def report(test: str, **counts: object) -> None:
    """Print the counts a test observed (shown with ``pytest -s`` or ``-rP``)."""
    print(f"[counts] {test}: " + " ".join(f"{k}={v}" for k, v in counts.items()))


def lifecycle_of(runner: AppRunner) -> Lifecycle:
    """The running app's lifecycle, as the app's integration hands it out."""
    app = runner.app
    if isinstance(app, Litestar):
        lifecycle = portside_litestar.get_lifecycle(app)
    else:  # FastAPI is Starlette
        lifecycle = portside_starlette.get_lifecycle(app)  # type: ignore[arg-type]
    assert isinstance(lifecycle, Lifecycle)
    return lifecycle


def checked_out(runner: AppRunner) -> int:
    """Connections the app's pools have lent out right now (0 between requests)."""
    pools = lifecycle_of(runner).database().pool_status()
    return sum(status.checked_out or 0 for status in pools.values())
