"""The README and docs/ stay true to the project: the files they name exist, the `make` targets they name are in
the Makefile, their links resolve, and the README stays short enough to read."""

import re
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.report.readme import END, START

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
# A file or folder of the project named in inline code: `src/<package>/train/sft.py`, `ops/grafana/`, ...
PROJECT_PATH = re.compile(r"`((?:src|scripts|ops|tests|notebooks|deploy|\.github)/[^`\s]*)`")
MAKE = re.compile(r"(?:^|[\s;&|(])make((?: +[a-z][a-z-]*)+)")
LINK = re.compile(r"\]\(([^)\s#]+)")


def code(text: str) -> list[str]:
    """Every line of fenced code, and every inline code span outside the fences."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return lines + INLINE_CODE.findall(FENCE.sub("", text))


@pytest.mark.parametrize("page", ["tour.md", "skills.md"])
def test_paths_named_in_the_docs_exist(page):
    named = PROJECT_PATH.findall((ROOT / "docs" / page).read_text(encoding="utf-8"))
    assert any(path.startswith("src/") for path in named), f"docs/{page} names no module"
    assert [path for path in named if not (ROOT / path).exists()] == [], f"docs/{page} names missing files"


def test_readme_is_at_most_200_lines():
    """Not counting the results section, which `report` writes from the last evaluation."""
    head, rest = (ROOT / "README.md").read_text(encoding="utf-8").split(START)
    lines = len(f"{head}{START}\n{END}{rest.split(END)[1]}".splitlines())
    assert lines <= 200, f"README.md has {lines} lines besides its results; move detail to docs/"


def test_make_targets_named_in_the_docs_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    for page in PAGES:
        for line in code(page.read_text(encoding="utf-8")):
            for match in MAKE.finditer(line):
                unknown = set(match.group(1).split()) - targets
                assert not unknown, f"{page.name}: `make{match.group(1)}` names no target of the Makefile"


def test_links_between_the_docs_resolve():
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
