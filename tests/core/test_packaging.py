"""Each package installs on its own: license, metadata, README, pinned siblings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

import portside

ROOT = Path(__file__).parents[2]
PACKAGES = sorted(p.parent for p in ROOT.glob("*/*/pyproject.toml"))
SIBLINGS = {"portside", "portside-testing", "portside-fastapi", "portside-litestar"}
SIBLINGS |= {"portside-starlette"}


def project(directory: Path) -> dict[str, Any]:
    return dict(tomllib.loads((directory / "pyproject.toml").read_text())["project"])


def test_every_package_is_found() -> None:
    names = {project(p)["name"] for p in PACKAGES}
    assert SIBLINGS | {"portside-example"} == names


@pytest.mark.parametrize("directory", PACKAGES, ids=lambda p: p.name)
def test_the_package_ships_the_license(directory: Path) -> None:
    assert (directory / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    meta = project(directory)
    assert meta["license"] == "MIT"
    assert meta["license-files"] == ["LICENSE"]


@pytest.mark.parametrize("directory", PACKAGES, ids=lambda p: p.name)
def test_the_package_has_the_metadata_an_index_shows(directory: Path) -> None:
    meta = project(directory)
    assert meta["version"] == portside.__version__
    assert meta["authors"]
    assert meta["keywords"]
    assert "Typing :: Typed" in meta["classifiers"]
    assert {"Homepage", "Documentation", "Source", "Changelog"} <= set(meta["urls"])


@pytest.mark.parametrize("directory", PACKAGES, ids=lambda p: p.name)
def test_siblings_are_pinned_to_the_same_version(directory: Path) -> None:
    for requirement in project(directory)["dependencies"]:
        name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]
        if name in SIBLINGS:
            assert requirement.endswith(f"=={portside.__version__}"), requirement


@pytest.mark.parametrize("directory", PACKAGES, ids=lambda p: p.name)
def test_the_package_readme_links_the_documentation(directory: Path) -> None:
    readme = (directory / "README.md").read_text()
    assert len(readme.split()) > 60, "a paragraph explaining the package"
    assert project(directory)["urls"]["Documentation"] in readme
