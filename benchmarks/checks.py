"""The routes' prepared calls and what a correct answer to each is.

Every response of every contestant is checked (status and body) after its batch
was timed, so checking costs the measurement nothing.
"""

from __future__ import annotations

import json
import random
from typing import Any

from benchmarks.driver import Call
from benchmarks.models import LIST_LIMIT, NEW_ITEM, SEED_ROWS, ItemRead, expected_item

#: Route names, in report order: ``GET /items/{id}``, ``GET /items?limit=20``, ``POST /items``.
ROUTES = ("get", "list", "create")
ROUTE_LABELS = {
    "get": "GET /items/{id}",
    "list": f"GET /items?limit={LIST_LIMIT}",
    "create": "POST /items",
}
EXPECTED_STATUS = {"get": 200, "list": 200, "create": 201}

_GET_CALLS = [Call.build("get", "GET", f"/items/{i}", item_id=i) for i in range(1, SEED_ROWS + 1)]
_LIST_CALL = Call.build("list", "GET", "/items", query=f"limit={LIST_LIMIT}".encode())
_CREATE_CALL = Call.build("create", "POST", "/items", body=json.dumps(NEW_ITEM).encode())
_EXPECTED_LIST = [expected_item(i) for i in range(1, LIST_LIMIT + 1)]


def calls(route: str, count: int, rng: random.Random) -> list[Call]:
    """``count`` prepared calls of ``route`` (random ids for ``get``)."""
    if route == "get":
        return rng.choices(_GET_CALLS, k=count)
    if route == "list":
        return [_LIST_CALL] * count
    if route == "create":
        return [_CREATE_CALL] * count
    raise ValueError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")


def mixed_calls(count: int, rng: random.Random) -> list[Call]:
    """``count`` calls spread evenly over the three routes, shuffled."""
    batch = [c for route in ROUTES for c in calls(route, count // len(ROUTES) + 1, rng)]
    rng.shuffle(batch)
    return batch[:count]


def _as_json(payload: Any) -> Any:
    """A response body (bytes) or a raw contestant's ORM objects, as JSON values."""
    if isinstance(payload, bytes):
        return json.loads(payload)
    if isinstance(payload, list | tuple):
        return [ItemRead.model_validate(item).model_dump() for item in payload]
    return ItemRead.model_validate(payload).model_dump()


def problem(call: Call, status: int, payload: Any) -> str | None:
    """What is wrong with an answer to ``call``, or ``None`` if it is right."""
    expected = EXPECTED_STATUS[call.route]
    if status != expected:
        detail = payload[:200] if isinstance(payload, bytes | str) else payload
        return f"{call.method} {call.path}: status {status}, expected {expected}: {detail!r}"
    try:
        body = _as_json(payload)
    except ValueError as exc:
        return f"{call.method} {call.path}: unreadable body ({exc})"
    if call.route == "get":
        ok = body == expected_item(call.item_id)
    elif call.route == "list":
        ok = body == _EXPECTED_LIST
    else:
        ok = (
            isinstance(body, dict)
            and isinstance(body.get("id"), int)
            and body["id"] > SEED_ROWS
            and body.get("name") == NEW_ITEM["name"]
            and body.get("price") == NEW_ITEM["price"]
        )
    return None if ok else f"{call.method} {call.path}: unexpected body {body!r}"[:300]
