"""A test client for an app built with any portside integration.

:func:`open_client` runs the app's lifespan in-process (with
:class:`~portside_testing.asgi.AppRunner`) and gives a :class:`Client` with the usual
``get``/``post``/... methods. Started inside the pytest plugin's outer transaction
(the ``portside_client`` fixture), the app's :class:`~portside.Lifecycle` joins that
transaction by itself, whatever the framework: everything the app commits is rolled
back when the client exits, and leaks are checked just before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlencode

from portside import Database, Lifecycle, SerialGate, current_binding, use_binding
from portside_testing.asgi import AppRunner, ASGIApp, Response
from portside_testing.leaks import check_for_leaks
from portside_testing.outer_transaction import OuterTransaction

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Client", "ClientFactory", "LifecycleRecorder", "Response", "open_client"]


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
    binding = current_binding()
    recorder = binding if isinstance(binding, OuterTransaction) else LifecycleRecorder()
    first = len(recorder.lifecycles)
    with ExitStack() as stack:
        if recorder is not binding:
            stack.enter_context(use_binding(recorder))
        async with AppRunner(cast(ASGIApp, app)) as runner:
            lifecycles = recorder.lifecycles[first:]
            yield Client(runner, lifecycles, raise_app_exceptions=raise_app_exceptions)
            await runner.wait_idle()  # requests whose client hung up may still be running
            check_for_leaks(lifecycles, when="when the client exited")


class LifecycleRecorder:
    """A binding that changes nothing but remembers the lifecycles started under it.

    The client uses it outside the test kit's transaction, so it finds the app's
    lifecycle on every framework, wherever the integration keeps it.
    """

    gate: SerialGate | None = None

    def __init__(self) -> None:
        self.lifecycles: list[Lifecycle] = []

    def lifecycle_started(self, lifecycle: Lifecycle) -> None:
        """Remember ``lifecycle``."""
        self.lifecycles.append(lifecycle)

    async def async_connection(self, engine: AsyncEngine) -> None:
        """Sessions use the pool."""

    def sync_connection(self, engine: Engine) -> None:
        """Sessions use the pool."""

    async def lifecycle_stopping(self, databases: Sequence[Database]) -> list[str]:
        """Nothing to let go of."""
        return []


class ClientFactory(Protocol):
    """The type of the ``portside_client`` fixture: ``async with portside_client(app) as c``."""

    def __call__(
        self, app: Any, *, raise_app_exceptions: bool = True
    ) -> AbstractAsyncContextManager[Client]:
        """Start ``app`` inside the test's transaction; see :func:`open_client`."""
        ...
