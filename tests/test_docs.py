"""Every markdown link in the README and docs/ resolves, and the docs site builds with --strict."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", flags=re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, without punctuation, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file: its headings' (with GitHub's -1, -2 suffixes for repeats)
    and those of ``<a id="...">`` tags."""
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    found = set(HTML_ANCHOR.findall(text))
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """The links of one markdown file whose file or heading anchor does not exist."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    return broken


def test_github_slug_matches_github():
    assert github_slug("MinAtar (`envs/minatar.py`)") == "minatar-envsminatarpy"
    assert github_slug("Results (the main job)") == "results-the-main-job"
    assert (
        github_slug("2026-11-30 late: the op's own AVX-512 matmuls, the input term in the loop (issue 10)")
        == "2026-11-30-late-the-ops-own-avx-512-matmuls-the-input-term-in-the-loop-issue-10"
    )


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "a.md").write_text(
        "# Title\n\n## A section\n\n[ok](b.md#b-heading) [ok](#a-section) [web](https://example.org)\n"
        "[missing file](c.md) [missing anchor](b.md#nope) ![missing picture](results/x.png)\n"
        '<a id="here"></a>[ok](#here)\n'
        "`[in code](d.md)`\n\n```\n[in a fence](e.md)\n```\n"
    )
    (tmp_path / "b.md").write_text("# B heading\n")
    broken = broken_links(tmp_path / "a.md")
    assert [entry.split(":")[0] for entry in broken] == ["c.md", "b.md#nope", "results/x.png"]


@pytest.mark.parametrize("path", PAGES, ids=[str(path.relative_to(ROOT)) for path in PAGES])
def test_markdown_links_resolve(path):
    assert broken_links(path) == []


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the docs extra)"
)
def test_docs_site_builds_strictly(tmp_path):
    """A broken link, a page left out of the nav or an API name that no longer exists fails this."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "nn" / "index.html").exists()
