"""The "Testing your app" example (README, docs) is ``test_readme_example.py``, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
EXAMPLE = Path(__file__).with_name("test_readme_example.py")
SECTION = "## Testing your app"


def first_python_block(readme: Path, heading: str = SECTION) -> str:
    text = readme.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no python block in {SECTION!r} of {readme}"
    return match.group(1)


def test_the_packages_readme_shows_the_tested_example() -> None:
    assert first_python_block(ROOT / "packages/portside-testing/README.md") == EXAMPLE.read_text()


def test_the_testing_page_shows_it_too() -> None:
    page = ROOT / "docs" / "testing.md"
    assert first_python_block(page, "# Testing your app") == EXAMPLE.read_text()


def test_the_root_readme_shows_it_too_once_it_has_the_section() -> None:
    readme = ROOT / "README.md"
    if SECTION in readme.read_text():
        assert first_python_block(readme) == EXAMPLE.read_text()
