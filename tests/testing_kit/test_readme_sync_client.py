"""The README's sync client example ("A client with the httpx API"), run on the example app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from restaurants.fastapi_app import create_app
from restaurants.models import Restaurant
from sqlmodel import Session

from portside import DatabaseSettings
from portside_testing import SyncClient, SyncClientFactory


@pytest.fixture
def client(
    portside_sync_client: SyncClientFactory, portside_settings: DatabaseSettings
) -> Iterator[SyncClient]:
    with portside_sync_client(create_app(portside_settings)) as client:
        yield client


@pytest.fixture
def db(client: SyncClient) -> Session:
    return client.session()


def test_the_app_lists_what_the_test_added(client: SyncClient, db: Session) -> None:
    db.add(Restaurant(name="Sakura", cuisine="japanese"))
    db.commit()
    response = client.get("/restaurants")
    assert response.status_code == 200
    assert [r["name"] for r in response.json()] == ["Sakura"]
