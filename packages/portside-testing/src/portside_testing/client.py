"""A test client for an app built with any portside integration.

:func:`open_client` runs the app's lifespan in-process (with
:class:`~portside_testing.asgi.AppRunner`) and gives a :class:`Client` with the usual
``get``/``post``/... methods. Started inside the pytest plugin's outer transaction
(the ``portside_client`` fixture), the app's :class:`~portside.Lifecycle` joins that
transaction by itself, whatever the framework: everything the app commits is rolled
back when the client exits, and leaks are checked just before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, cast
from urllib.parse import urlencode

from portside import Lifecycle
from portside.asgi import LIFECYCLE_STATE_KEY
from portside.outer_transaction import active_outer_transaction
from portside_testing.asgi import AppRunner, ASGIApp, Response
from portside_testing.leaks import check_for_leaks

__all__ = ["Client", "ClientFactory", "Response", "open_client"]


class Client:
    """Sends requests to a running app; get one from :func:`open_client`.

    Exceptions the app raises while answering are re-raised by the request
    (``raise_app_exceptions=True``, the default), so a test shows the real error
    instead of a bare 500.
    """

    def __init__(
        self, runner: AppRunner, lifecycles: list[Lifecycle], *, raise_app_exceptions: bool
    ) -> None:
        #: The driver running the app (for disconnects, lifespan state, ...).
        self.runner = runner
        #: The lifecycles the app started (one for an app with one portside lifespan).
        self.lifecycles = lifecycles
        self._raise = raise_app_exceptions

    @property
    def lifecycle(self) -> Lifecycle:
        """The app's :class:`~portside.Lifecycle`: use it to arrange or check data.

        ``async with client.lifecycle.async_session() as session:`` works on the
        app's own connection inside the test's transaction, so the app sees what it
        commits and the test sees what the app commits.
        """
        if len(self.lifecycles) != 1:
            raise LookupError(
                f"The app started {len(self.lifecycles)} portside lifecycles, not one; "
                "pick one from `client.lifecycles`."
            )
        return self.lifecycles[0]

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int | float] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request and return the complete response.

        ``json`` (if not ``None``) is the body; ``params`` are added to the query string.
        """
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urlencode(params)}"
        response = await self.runner.request(method, path, json=json, headers=headers)
        if self._raise and response.error is not None:
            raise response.error
        return response

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str | int | float] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """``GET path``."""
        return await self.request("GET", path, params=params, headers=headers)

    async def post(
        self, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """``POST path`` with ``json`` as the body."""
        return await self.request("POST", path, json=json, headers=headers)

    async def put(
        self, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """``PUT path`` with ``json`` as the body."""
        return await self.request("PUT", path, json=json, headers=headers)

    async def patch(
        self, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """``PATCH path`` with ``json`` as the body."""
        return await self.request("PATCH", path, json=json, headers=headers)

    async def delete(self, path: str, *, headers: Mapping[str, str] | None = None) -> Response:
        """``DELETE path``."""
        return await self.request("DELETE", path, headers=headers)


@asynccontextmanager
async def open_client(app: Any, *, raise_app_exceptions: bool = True) -> AsyncIterator[Client]:
    """Start ``app`` (its lifespan), yield a :class:`Client`, stop it on exit.

    ``app`` is any ASGI application (typed loosely: frameworks spell the ASGI
    types differently).

    If the block ends normally, the app's lifecycles are checked for leaked
    connections and unfinished units of work *before* the app shuts down;
    :class:`~portside_testing.leaks.ConnectionLeakError` is raised after shutdown.
    """
    __tracebackhide__ = True  # pytest: a leak report points at the test, not here
    outer = active_outer_transaction()
    first = len(outer.lifecycles) if outer is not None else 0
    runner = AppRunner(cast(ASGIApp, app))
    async with runner:
        if outer is not None:
            lifecycles = outer.lifecycles[first:]
        else:  # no test transaction: find the lifecycle the way the integrations store it
            found = runner.state.get(LIFECYCLE_STATE_KEY)
            lifecycles = [found] if isinstance(found, Lifecycle) else []
        yield Client(runner, lifecycles, raise_app_exceptions=raise_app_exceptions)
        await runner.wait_idle()  # requests whose client hung up may still be running
        check_for_leaks(lifecycles, when="when the client exited")


class ClientFactory(Protocol):
    """The type of the ``portside_client`` fixture: ``async with portside_client(app) as c``."""

    def __call__(
        self, app: Any, *, raise_app_exceptions: bool = True
    ) -> AbstractAsyncContextManager[Client]:
        """Start ``app`` inside the test's transaction; see :func:`open_client`."""
        ...
