"""The portside example: a restaurants API written for FastAPI, Litestar and Starlette.

``restaurants.models`` holds the SQLModel tables and schemas, ``restaurants.setup``
what the apps do at startup, ``restaurants.<framework>_app`` the three apps (each
with a ``create_app()`` factory), and ``restaurants.cli`` the ``restaurants`` command.
"""
