"""The install test: the packages as a new user gets them, outside the workspace.

Builds every wheel and sdist (``uv build --all-packages``), checks each ships the
LICENSE, then for each framework makes a fresh virtual environment in a temporary
directory, installs exactly what its README's Install section names (the wheels just
built stand in for the package index), serves the README's example there with
uvicorn (``/health``, a write, read back), and runs
``portside check`` on the example's database. The FastAPI environment then gets
``portside-testing``, and the README's kind of test runs there with its plugin.

Run from the repository root with the workspace's python: ``uv run python
.ci/install_test.py``. Nothing in the workspace is used by the fresh environments.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from tests.docs.test_readme_examples import readme_block, served  # noqa: E402

PYTHON = "3.11"
# (package, what its README's Install section installs, path, body)
FRAMEWORKS = [
    ("portside-fastapi", "/heroes", {"name": "Deadpond"}, "heroes.db"),
    ("portside-litestar", "/visits", {"page": "/menu"}, "app.db"),
    ("portside-starlette", "/heroes", {"name": "Deadpond"}, "heroes.db"),
]

PLUGIN_TEST = """
import pytest
from example_app import app


@pytest.mark.anyio
async def test_a_write_is_rolled_back_after_the_test(portside_client):
    async with portside_client(app) as client:
        created = await client.post("{path}", json={body!r})
        assert created.status == 201
        assert (await client.get(f"{path}/{{created.json()['id']}}")).status == 200
"""


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(  # noqa: S603  (our own commands)
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(
            f"install test: {' '.join(map(str, command))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def step(name: str, started: float) -> None:
    print(f"install test: {name} ({time.monotonic() - started:.1f}s)", flush=True)


def check_archives(dist: Path) -> dict[str, Path]:
    """Every wheel and sdist ships the LICENSE; the wheels by distribution name."""
    wheels = {}
    for wheel in sorted(dist.glob("*.whl")):
        names = zipfile.ZipFile(wheel).namelist()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), wheel
        wheels[wheel.name.split("-")[0].replace("_", "-")] = wheel
    for sdist in sorted(dist.glob("*.tar.gz")):
        with tarfile.open(sdist) as archive:
            assert any(n.endswith("/LICENSE") for n in archive.getnames()), sdist
    assert len(wheels) == len(list(ROOT.glob("*/*/pyproject.toml"))), wheels
    return wheels


def install_line(package_readme: Path) -> list[str]:
    """The requirements of the README's ``pip install`` line."""
    text = package_readme.read_text()
    line = re.search(r"^pip install (.+)$", text, re.MULTILINE)
    assert line is not None, f"no `pip install` line in {package_readme}"
    return [r.strip('"') for r in line.group(1).split("#")[0].split()]


def as_files(requirements: list[str], wheels: dict[str, Path]) -> tuple[list[str], list[str]]:
    """Our packages point at the built wheels; the rest come from the index.

    Returns the requirements, and overrides for the siblings they pull in.
    """
    named, out = set(), []
    for requirement in requirements:
        name, extras = re.fullmatch(r"([\w-]+)(\[[\w,]+\])?", requirement).groups()  # type: ignore[union-attr]
        if name in wheels:
            named.add(name)
            out.append(f"{name}{extras or ''} @ {wheels[name].as_uri()}")
        else:
            out.append(requirement)
    overrides = [f"{n} @ {w.as_uri()}" for n, w in wheels.items() if n not in named]
    return out, overrides


def package_example(package_readme: Path) -> str:
    text = package_readme.read_text().split("\n## Example\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert match is not None, f"no example in {package_readme}"
    return match.group(1)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="portside-install-") as scratch:
        work = Path(scratch)
        started = time.monotonic()
        run("uv", "build", "--quiet", "--all-packages", "--out-dir", work / "dist", cwd=ROOT)
        wheels = check_archives(work / "dist")
        step(f"built {len(wheels)} wheels and sdists, each with its LICENSE", started)
        for package, path, body, database in FRAMEWORKS:
            started = time.monotonic()
            framework = package.removeprefix("portside-")
            readme = next(ROOT.glob(f"*/{package}/README.md"))
            source = package_example(readme)
            heading = {"fastapi": "FastAPI", "litestar": "Litestar", "starlette": "Starlette"}
            assert source == readme_block(f"## {heading[framework]}"), (
                f"{readme}: the example differs from the main README's"
            )
            venv = work / f"venv-{framework}"
            python = venv / "bin" / "python"
            run("uv", "venv", "--quiet", "--python", PYTHON, venv)
            requirements, overrides = as_files(install_line(readme), wheels)
            (work / "overrides.txt").write_text("\n".join(overrides) + "\n")
            run(
                "uv", "pip", "install", "--quiet", "--python", python,
                "--override", work / "overrides.txt", *requirements,
            )  # fmt: skip
            app_dir = work / framework
            app_dir.mkdir()
            with served(source, app_dir, str(python)) as client:
                created = client.post(path, json=body)
                assert created.status_code == 201, created.text
                row = created.json()
                assert client.get(f"{path}/{row['id']}").json() == row
            report = run(venv / "bin" / "portside", "check", "--url", f"sqlite:///{database}",
                         cwd=app_dir)  # fmt: skip
            assert "sqlite" in report, report
            version = run(python, "-c", "import portside; print(portside.__version__)")
            assert version.strip() == wheels["portside"].name.split("-")[1], version
            step(f"{package}: {' '.join(install_line(readme))}: example served, "
                 "portside check passed", started)  # fmt: skip
            if framework == "fastapi":
                started = time.monotonic()
                requirements, overrides = as_files(["portside-testing"], wheels)
                (work / "overrides.txt").write_text("\n".join(overrides) + "\n")
                run(
                    "uv", "pip", "install", "--quiet", "--python", python,
                    "--override", work / "overrides.txt", *requirements, "anyio",
                )  # fmt: skip
                (app_dir / "test_app.py").write_text(PLUGIN_TEST.format(path=path, body=body))
                (app_dir / "conftest.py").write_text(
                    "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
                )
                run(python, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider",
                    cwd=app_dir)  # fmt: skip
                step("portside-testing: its plugin runs a test of the example", started)


if __name__ == "__main__":
    main()
