"""All the conftest a TestClient-style suite needs on the plugin (a few lines)."""

from collections.abc import Iterator

import pytest
from sqlmodel import Session

from portside_testing import SyncClient, SyncClientFactory
from tests.testing_kit.realistic.app import create_app


@pytest.fixture
def client(portside_sync_client: SyncClientFactory) -> Iterator[SyncClient]:
    with portside_sync_client(create_app()) as client:
        yield client


@pytest.fixture
def db(client: SyncClient) -> Session:
    return client.session()
