"""The user guide (docs/, mkdocs.yml) stays true to the template: generated options page, links, commands, build."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import TEMPLATE

DOCS = TEMPLATE / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
PACKAGE_DIR = PROJECT / "src" / "{{cookiecutter.package_name}}"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CONFIG_SECTIONS = ("data", "model", "lora", "train", "eval", "tracking", "monitor", "report")
# `train.py`, `eval.json` ...: file names that look like config keys.
FILE_SUFFIXES = {"py", "jsonl", "csv", "parquet", "yaml", "json", "md", "safetensors", "jinja", "txt"}
CONFIG_KEY = re.compile(rf"(?<![\w/.-])((?:{'|'.join(CONFIG_SECTIONS)})\.[a-z_][a-z0-9_]*)(?![\w-])")


def load_gen_options() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_options", DOCS / "gen_options.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_options = load_gen_options()


def questions() -> list[str]:
    data = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    return [key for key in data if not key.startswith("_")]


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def code_lines(text: str) -> list[str]:
    """Every line of fenced code, and every inline code span outside fences."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return lines + INLINE_CODE.findall(prose(text))


def all_code_lines() -> list[tuple[str, str]]:
    return [(page.name, line) for page in PAGES for line in code_lines(page.read_text(encoding="utf-8"))]


# ---- options page ---------------------------------------------------------------------------------------


def test_options_page_is_generated_from_cookiecutter_json():
    expected = gen_options.render()
    current = (DOCS / "options.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/options.md is out of date with cookiecutter.json or hooks/pre_gen_project.py: "
        "run python docs/gen_options.py (and add a RULES entry there for a new question)"
    )


def test_every_question_is_on_the_options_page():
    page = (DOCS / "options.md").read_text(encoding="utf-8")
    for key in questions():
        assert f"\n## {key}\n" in page, f"cookiecutter.json key {key!r} has no section in docs/options.md"
        assert f"[`{key}`](#{key})" in page, f"cookiecutter.json key {key!r} is missing from the summary table"


def test_option_rules_claim_a_check_exactly_where_the_hook_has_one():
    defaults = gen_options.rendered_answers()
    hook = gen_options.load_hook(defaults)
    assert hook.validate(defaults) == [], "the default answers must pass the hook"
    assert set(gen_options.RULES) == set(questions()), "docs/gen_options.py RULES must cover exactly the questions"
    data = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    for key, rule in gen_options.RULES.items():
        is_choice = isinstance(data[key], list)  # cookiecutter itself refuses values outside the list
        if key in hook.CHECKS and not is_choice:
            assert rule.rejects, f"the hook checks {key}: give RULES[{key!r}] examples it rejects"
        if key not in hook.CHECKS:
            assert not rule.rejects, f"the hook does not check {key}, yet RULES[{key!r}] lists rejected values"
        for value in rule.rejects:
            messages = gen_options.hook_messages(hook, key, value)
            assert messages, f"the hook accepts {key}={value!r}, which docs/options.md shows as rejected"
            assert all(message.startswith(f"{key}=") for message in messages), messages


# ---- links, commands and keys named on the pages ----------------------------------------------------------


def test_nav_lists_every_page():
    nav = (TEMPLATE / "mkdocs.yml").read_text(encoding="utf-8")
    for page in PAGES:
        assert f": {page.name}" in nav, f"docs/{page.name} is not in the nav of mkdocs.yml"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_internal_links_point_at_existing_files(page):
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # external, or an anchor on the same page (mkdocs --strict checks anchors)
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_file(), f"docs/{page.name} links to {target}, which does not exist"
        assert DOCS.resolve() in path.parents, f"docs/{page.name} links outside docs/: {target}"


def make_targets(makefile: Path) -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*)\s*:(?!=)", makefile.read_text(encoding="utf-8"), re.M))


def test_make_targets_named_in_the_docs_exist():
    targets = make_targets(TEMPLATE / "Makefile") | make_targets(PROJECT / "Makefile")
    for page, line in all_code_lines():
        for match in re.finditer(r"(?:^|[\s;&|(])make((?: +[a-z][a-z-]*)+)", line):
            for target in match.group(1).split():
                assert target in targets, f"docs/{page}: `make {target}` is not a target of either Makefile"


@pytest.fixture(scope="module")
def project_package():
    """The generated project's package, imported straight from the template (src/ is copied unrendered)."""
    pytest.importorskip("typer", reason="typer is a dependency of the generated project: run `make install`")
    pytest.importorskip("pydantic", reason="pydantic is a dependency of the generated project: run `make install`")
    name = "docs_check_project_package"
    spec = importlib.util.spec_from_file_location(
        name, PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(PACKAGE_DIR)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        spec.loader.exec_module(package)
        yield name
    finally:
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


def test_cli_commands_named_in_the_docs_exist(project_package):
    import typer.main

    cli = importlib.import_module(f"{project_package}.cli")
    root = typer.main.get_command(cli.app)
    program = gen_options.rendered_answers()["project_slug"]
    checked = 0
    for page, line in all_code_lines():
        words = line.split("#")[0].split()
        if not words or words[0] != program:
            continue
        command, path = root, [program]
        for word in words[1:]:
            if word.startswith("-"):
                options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
                flag = word.split("=")[0]
                assert flag in options | {"--help"}, f"docs/{page}: `{' '.join(path)}` has no option {flag}"
            elif hasattr(command, "commands") and word in command.commands:
                command = command.commands[word]
                path.append(word)
            elif hasattr(command, "commands"):
                pytest.fail(f"docs/{page}: `{' '.join(path)}` has no subcommand {word!r} ({line.strip()})")
        checked += 1
    assert checked, f"no `{program} ...` command found in the docs: did the default slug change?"


def test_config_keys_named_in_the_docs_exist(project_package):
    config = importlib.import_module(f"{project_package}.config")
    keys = {key for key, _default, _text in config.describe_keys()}
    for page in PAGES:
        for key in CONFIG_KEY.findall(page.read_text(encoding="utf-8")):
            if key.rsplit(".", 1)[1] in FILE_SUFFIXES:
                continue
            assert key in keys, f"docs/{page.name} names config key {key!r}, which config.py does not define"


# ---- the module map -------------------------------------------------------------------------------------

MAP_ROW = re.compile(r"^\| `([\w/]+(?:\.py|/))` \|", re.M)
# `src/{{ cookiecutter.package_name }}/<path>` in the generated project's docs; the chosen cloud's folder is written
# `clouds/{{ cookiecutter.cloud | replace('-', '_') }}/`.
DOCS_PATH = re.compile(r"`src/\{\{ cookiecutter\.package_name \}\}/([^`]+)`")
CLOUD_DIR = "{{ cookiecutter.cloud | replace('-', '_') }}"


def package_modules() -> set[str]:
    """Every module of the generated package, relative to it: `registry.py`, `serve/routes/chat.py`, ..."""
    return {
        str(path.relative_to(PACKAGE_DIR))
        for path in PACKAGE_DIR.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }


def test_architecture_map_lists_exactly_the_modules_of_the_package():
    rows = MAP_ROW.findall((DOCS / "architecture.md").read_text(encoding="utf-8"))
    covered = {module for module in package_modules() for row in rows if module == row or module.startswith(row)}
    assert package_modules() - covered == set(), "modules missing from the map in docs/architecture.md"
    stale = [row for row in rows if not (PACKAGE_DIR / row).exists()]
    assert stale == [], f"docs/architecture.md maps modules that do not exist: {stale}"


def test_paths_in_the_generated_docs_exist():
    """docs/skills.md and docs/tour.md of the generated project name only modules of the package (every cloud's)."""
    for page in ("skills.md", "tour.md"):
        named = DOCS_PATH.findall((PROJECT / "docs" / page).read_text(encoding="utf-8"))
        assert named, f"the generated docs/{page} names no src/ path"
        paths = {path.replace(CLOUD_DIR, cloud) for path in named for cloud in ("aws", "gcp", "azure", "hf_spaces")}
        missing = sorted(path for path in paths if not (PACKAGE_DIR / path).exists())
        assert missing == [], f"{{{{cookiecutter.project_slug}}}}/docs/{page} names files that do not exist: {missing}"


# ---- the site builds ------------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed: pip install -r requirements-dev.txt (or make install)")
    site = tmp_path / "site"
    # No --quiet: with it, mkdocs 1.6 hides warnings from --strict and exits 0 despite them.
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(TEMPLATE / "mkdocs.yml")]
    result = subprocess.run(
        [*command, "--site-dir", str(site)],
        cwd=TEMPLATE,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    for page in PAGES:
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"
    assert "project_slug" in (site / "options" / "index.html").read_text(encoding="utf-8")
