"""Collect the framework harnesses: ``harness_*.py`` modules hold ``Test*`` suites.

pytest only collects ``test_*.py`` by default; the harness modules are named for
what they are (one framework's harness plus its ``ConformanceSuite`` subclass).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.pathlib import fnmatch_ex


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``harness_*.py`` as test modules, unless pytest already does."""
    if not (file_path.name.startswith("harness_") and file_path.suffix == ".py"):
        return None
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's python plugin collects it
    if any(fnmatch_ex(pattern, file_path) for pattern in parent.config.getini("python_files")):
        return None
    module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
    return module
