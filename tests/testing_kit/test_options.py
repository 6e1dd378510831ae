"""Choosing the test database: the option, the environment variable, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER_TEST = """
def test_database(portside_database_url, portside_settings):
    print("url:", portside_database_url)
    print("settings:", portside_settings.url, portside_settings.async_url)
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("PORTSIDE_TEST_DATABASE_URL", "DATABASE_URL", "DATABASE_ASYNC_URL"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_inner=INNER_TEST)
    return pytester


def test_the_option_wins_over_the_environment(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PORTSIDE_TEST_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    option = f"sqlite:///{tmp_path / 'option.db'}"
    result = inner.runpytest_inprocess("-s", "--portside-database-url", option)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*url: {option}", f"settings: {option} sqlite+aiosqlite:///*"])


def test_an_async_url_from_the_environment(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("PORTSIDE_TEST_DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///somewhere/else.db")  # never used by tests
    result = inner.runpytest_inprocess("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"settings: sqlite:///{tmp_path / 'env.db'} {url}"])


def test_in_memory_sqlite_is_refused_with_the_reason(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTSIDE_TEST_DATABASE_URL", "sqlite://")
    result = inner.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*an in-memory SQLite database (sqlite://) vanishes*"])
