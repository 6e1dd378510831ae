"""What the core package promises about itself."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_web_framework() -> None:
    code = (
        "import sys, portside, portside.asgi, portside.lifecycle\n"
        "loaded = {'fastapi', 'starlette', 'litestar'} & set(sys.modules)\n"
        "print(sorted(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_core_is_typed() -> None:
    import portside

    assert portside.__file__ is not None
    from pathlib import Path

    assert (Path(portside.__file__).parent / "py.typed").is_file()
