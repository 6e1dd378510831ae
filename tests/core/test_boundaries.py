"""What the core package promises about itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


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


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The portside modules ``path`` imports when it is imported (not for type checking)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue  # imported when called, not when the module loads
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("portside"):
                found.add(str(child.module))
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & modules


def test_core_modules_import_each_other_without_cycles() -> None:
    """Each module's imports form a graph with no cycle (packages re-exporting aside)."""
    import portside

    root = Path(portside.__file__).parent
    paths = {
        ".".join(("portside", *p.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in root.rglob("*.py")
    }
    packages = {name for name, p in paths.items() if p.name == "__init__.py"}
    graph = {
        name: _runtime_imports(path, set(paths)) - packages - {name} for name, path in paths.items()
    }

    def cycle_from(name: str, trail: list[str]) -> list[str] | None:
        for imported in sorted(graph[name]):
            if imported in trail:
                return [*trail[trail.index(imported) :], imported]
            if (found := cycle_from(imported, [*trail, imported])) is not None:
                return found
        return None

    for name in sorted(graph):
        cycle = cycle_from(name, [name])
        assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
