import pytest
from restaurants.fastapi_app import create_app


@pytest.mark.anyio
async def test_add_a_restaurant(portside_client):
    async with portside_client(create_app()) as client:
        created = await client.post("/restaurants", json={"name": "Sakura", "cuisine": "japanese"})
        assert created.status == 201
        assert (await client.get(f"/restaurants/{created.json()['id']}")).json()["name"] == "Sakura"
