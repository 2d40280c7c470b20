"""Every runtime dependency that pyproject.toml declares is imported by the package, envs/ or scripts/."""

import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("rim_agents", "envs", "scripts")

# Distribution name -> the name it is imported by, where the two differ beyond '-' -> '_'.
IMPORT_NAMES = {"pyyaml": "yaml"}

# Needed at run time, yet never imported by our code: another package loads them.
EXCEPTIONS = {
    # SB3's progress bar (train(..., progress_bar=True), the scripts' default) imports tqdm.rich.
    "rich": "SB3's progress bar",
    # imageio's mp4 writer (scripts/evaluate.py --video) loads it as its ffmpeg plugin.
    "imageio-ffmpeg": "imageio's mp4 writer",
}


def declared_dependencies() -> list[str]:
    """The distribution names of pyproject.toml's [project] dependencies, lower case."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.match(r"[A-Za-z0-9._-]+", spec).group(0).lower() for spec in project["dependencies"]]


def imported_modules() -> set[str]:
    """The top-level names of every import statement (also inside functions) in the sources."""
    names = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names


def import_name(distribution: str) -> str:
    return IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))


def unused(dependencies: list[str], imported: set[str]) -> list[str]:
    """The dependencies that nothing imports and that are not a listed exception."""
    return [dist for dist in dependencies if dist not in EXCEPTIONS and import_name(dist) not in imported]


def test_unused_finds_a_dependency_nothing_imports():
    dependencies = ["torch", "moviepy", "pyyaml", "sb3-contrib", "rich"]
    assert unused(dependencies, imported={"torch", "yaml", "sb3_contrib"}) == ["moviepy"]


def test_every_runtime_dependency_is_imported():
    assert unused(declared_dependencies(), imported_modules()) == []


def test_exceptions_are_declared_and_really_not_imported():
    """An exception for a package that is no longer declared, or that is now imported, is stale."""
    declared, imported = declared_dependencies(), imported_modules()
    for distribution in EXCEPTIONS:
        assert distribution in declared, distribution
        assert import_name(distribution) not in imported, distribution
