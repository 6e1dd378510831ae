"""Reading the runnable example out of an integration's module docstring."""

from __future__ import annotations

import textwrap
from types import ModuleType


def docstring_example(module: ModuleType) -> str:
    """The indented block after the first ``::`` of ``module``'s docstring."""
    doc = module.__doc__
    assert doc is not None
    lines = []
    for line in doc.partition("::\n")[2].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))
