"""Every private name portside relies on still exists on the installed dependencies.

A failure names the dependency, its installed version and the range the name was
verified on (see :mod:`portside.internals`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portside.internals import INTERNALS, Internal, missing, problem


def _id(internal: Internal) -> str:
    return f"{internal.dependency}:{internal.owner}.{internal.name}"


@pytest.mark.parametrize("internal", [i for i in INTERNALS if i.kind != "scope key"], ids=_id)
def test_the_private_name_is_still_there(internal: Internal) -> None:
    why = missing(internal)
    assert why is None, why


@pytest.mark.parametrize("internal", [i for i in INTERNALS if i.kind == "scope key"], ids=_id)
def test_the_framework_still_sets_the_scope_key(internal: Internal) -> None:
    from litestar import Litestar, Request, get
    from litestar.testing import TestClient

    seen: list[bool] = []

    @get("/", sync_to_thread=False)
    def probe(request: Request[Any, Any, Any]) -> None:
        seen.append(internal.name in request.scope)

    with TestClient(Litestar([probe])) as client:
        assert client.get("/").status_code in {200, 204}
    assert seen == [True], problem(internal, "no longer sets it")


def test_the_docs_list_every_internal() -> None:
    page = (Path(__file__).parents[2] / "docs" / "versions.md").read_text()
    for internal in INTERNALS:
        assert internal.name in page, internal


def test_a_vanished_name_is_reported_with_the_installed_version() -> None:
    gone = Internal(
        "sqlalchemy", "sqlalchemy.orm.Session", "_no_such_method", ">=2.0,<2.2", "nothing"
    )
    message = missing(gone)
    assert message is not None
    import sqlalchemy

    assert f"sqlalchemy {sqlalchemy.__version__} installed" in message
    assert "sqlalchemy.orm.Session._no_such_method" in message
    assert ">=2.0,<2.2" in message


def test_a_changed_signature_is_reported() -> None:
    changed = Internal(
        "sqlalchemy",
        "sqlalchemy.orm.Session",
        "_autobegin_t",
        ">=2.0,<2.2",
        "nothing",
        parameters=("self", "renamed"),
    )
    message = missing(changed)
    assert message is not None
    assert "parameters are now" in message


def test_the_await_shim_is_sqlalchemys() -> None:
    import sqlalchemy.util

    from portside.internals import await_

    assert await_ is getattr(sqlalchemy.util, "await_", sqlalchemy.util.await_only)
