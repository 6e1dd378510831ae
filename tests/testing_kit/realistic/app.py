"""A small FastAPI + SQLModel app as users write them: users, a form login, items.

Sync (``def``) and async endpoints mixed, as real apps are; the tests next to it
use the plugin's sync client the way a Starlette ``TestClient`` suite does.
"""

import hashlib
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, UploadFile
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from sqlmodel import Field, SQLModel, select

import portside_fastapi
from portside_fastapi import AsyncSessionDep, SessionDep


class RealisticUser(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=100)
    password_hash: str = Field(max_length=64)


class RealisticItem(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=100)
    owner_id: int = Field(foreign_key="realisticuser.id")


class UserIn(SQLModel):
    email: str
    password: str


class ItemIn(SQLModel):
    title: str


def hash_password(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


oauth2 = OAuth2PasswordBearer(tokenUrl="/login")


def create_app() -> FastAPI:
    app = FastAPI()
    portside_fastapi.install(app)  # reads DATABASE_URL, as a deployed app does

    async def current_user(
        token: Annotated[str, Depends(oauth2)], session: AsyncSessionDep
    ) -> RealisticUser:
        user = await session.get(RealisticUser, int(token.removeprefix("user-")))
        if user is None:
            raise HTTPException(401, "unknown token")
        return user

    @app.post("/users", status_code=201)
    async def sign_up(body: UserIn, session: AsyncSessionDep) -> dict[str, int | str]:
        user = RealisticUser(email=body.email, password_hash=hash_password(body.password))
        session.add(user)
        await session.flush()
        return {"id": user.id or 0, "email": user.email}

    @app.post("/login")
    def login(
        form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep
    ) -> dict[str, str]:
        user = session.exec(
            select(RealisticUser).where(RealisticUser.email == form.username)
        ).first()
        if user is None or user.password_hash != hash_password(form.password):
            raise HTTPException(400, "wrong email or password")
        return {"access_token": f"user-{user.id}", "token_type": "bearer"}

    @app.post("/items", status_code=201)
    async def add_item(
        body: ItemIn,
        user: Annotated[RealisticUser, Depends(current_user)],
        session: AsyncSessionDep,
    ) -> RealisticItem:
        item = RealisticItem(title=body.title, owner_id=user.id or 0)
        session.add(item)
        await session.flush()
        return item

    @app.get("/items")
    def list_items(session: SessionDep) -> list[RealisticItem]:
        return list(session.exec(select(RealisticItem).order_by(RealisticItem.id)))

    @app.patch("/items/{item_id}")
    async def rename_item(item_id: int, body: ItemIn, session: AsyncSessionDep) -> RealisticItem:
        item = await session.get(RealisticItem, item_id)
        if item is None:
            raise HTTPException(404, "no such item")
        item.title = body.title
        return item

    @app.post("/upload")
    async def upload(file: UploadFile) -> dict[str, int | str]:
        return {"name": file.filename or "", "size": len(await file.read())}

    return app
