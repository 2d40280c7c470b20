"""The README's and the docs pages' Python examples run as written, and its commands exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


EXAMPLES = [(path, index, block) for path in PAGES for index, block in enumerate(_python_blocks(path))]


def test_readme_has_python_examples():
    """The front door shows the RIM module, a RIM policy in RecurrentPPO and RimPPO."""
    blocks = _python_blocks(README)
    assert len(blocks) >= 3
    assert any("from rim_agents.nn import RIM" in block for block in blocks)
    assert any("RecurrentPPO(MlpRimPolicy" in block for block in blocks)
    assert any("RimPPO(" in block for block in blocks)


def test_readme_two_commands_are_make_targets():
    """`make main` and `make test`, the README's two commands, are targets of the Makefile."""
    commands = re.search(r"## Two commands\n.*?```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert commands is not None
    named = re.findall(r"^make (\w+)", commands.group(1), flags=re.MULTILINE)
    assert named == ["main", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in named:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


@pytest.mark.parametrize(
    "path, index, block",
    EXAMPLES,
    ids=[f"{path.relative_to(ROOT)}-{index}" for path, index, _ in EXAMPLES],
)
def test_example_runs(path, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"{path.relative_to(ROOT)} example {index}", "exec"), {"__name__": "__readme__"})
