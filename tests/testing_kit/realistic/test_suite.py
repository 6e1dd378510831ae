"""A TestClient-style suite of a FastAPI + SQLModel app, on the plugin's sync client.

Plain ``def`` tests, ``status_code``/``json()``, a form login, a file upload, and a
``db`` session kept for the whole test and used between requests. Each test runs
twice (SQLite, PostgreSQL) and starts from empty tables: the writes of the others
were rolled back.
"""

from __future__ import annotations

from sqlmodel import Session, func, select

from portside_testing import SyncClient
from tests.testing_kit.realistic.app import RealisticItem, RealisticUser, hash_password


def sign_up_and_log_in(client: SyncClient, email: str = "ada@example.com") -> dict[str, str]:
    assert client.post("/users", json={"email": email, "password": "pw"}).status_code == 201
    response = client.post("/login", data={"username": email, "password": "pw"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_sign_up_log_in_and_add_an_item(client: SyncClient) -> None:
    headers = sign_up_and_log_in(client)
    created = client.post("/items", json={"title": "lamp"}, headers=headers)
    assert created.status_code == 201
    assert created.headers["content-type"] == "application/json"
    assert [item["title"] for item in client.get("/items").json()] == ["lamp"]


def test_every_test_starts_empty(client: SyncClient, db: Session) -> None:
    assert db.exec(select(func.count()).select_from(RealisticUser)).one() == 0
    assert client.get("/items").json() == []


def test_a_wrong_password_is_refused(client: SyncClient) -> None:
    sign_up_and_log_in(client)
    response = client.post("/login", data={"username": "ada@example.com", "password": "no"})
    assert response.status_code == 400
    assert "wrong email" in response.text


def test_rows_the_test_adds_are_what_the_app_sees(client: SyncClient, db: Session) -> None:
    db.add(RealisticUser(email="bob@example.com", password_hash=hash_password("pw")))
    db.commit()
    response = client.post("/login", data={"username": "bob@example.com", "password": "pw"})
    assert response.status_code == 200


def test_the_db_session_never_shows_stale_rows(client: SyncClient, db: Session) -> None:
    headers = sign_up_and_log_in(client)
    item_id = client.post("/items", json={"title": "lamp"}, headers=headers).json()["id"]
    assert db.get(RealisticItem, item_id).title == "lamp"  # loaded: in the identity map
    assert client.patch(f"/items/{item_id}", json={"title": "desk"}).status_code == 200
    assert db.get(RealisticItem, item_id).title == "desk"
    assert db.exec(select(RealisticItem.title)).all() == ["desk"]


def test_holding_the_db_session_does_not_block_the_app(client: SyncClient, db: Session) -> None:
    db.add(RealisticUser(email="cy@example.com", password_hash="x"))
    db.flush()  # the test's session is in the middle of its own transaction
    assert client.get("/items").status_code == 200
    db.commit()


def test_files_upload(client: SyncClient) -> None:
    response = client.post("/upload", files={"file": ("notes.txt", b"hello")})
    assert response.json() == {"name": "notes.txt", "size": 5}
