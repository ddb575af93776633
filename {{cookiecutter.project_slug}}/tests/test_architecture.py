"""The code stays easy to read and explain: no import cycles, short functions, every module importable.

Read from the source with the standard library's `ast`, so a cycle hidden in a function body or behind
`if TYPE_CHECKING:` counts too: such a cycle still means two modules that cannot be understood apart.
"""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = "{{ cookiecutter.package_name }}"
SOURCE = Path(__file__).parents[1] / "src" / PACKAGE
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's own modules that `name` imports anywhere in its file (top level or in a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from .pkg import mod` imports the submodule; `from .mod import name` imports the module.
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*trail[trail.index(target) :], target]
            if target not in state and (cycle := visit(target, [*trail, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_relative_and_lazy_imports():
    # cli imports the training code inside its command functions only: the graph must still see it.
    assert f"{PACKAGE}.train.sft" in GRAPH[f"{PACKAGE}.cli"]
    assert f"{PACKAGE}.config" in GRAPH[f"{PACKAGE}.cli"]


# The stages in the order data flows (docs/architecture.md): a module may import its own stage and earlier
# ones, never a later one. cli.py, the composition root, wires them all; an extra sits after what it builds on.
STAGES = [
    ("errors", "config"),
    ("tasks",),
    ("data",),
    ("model",),
    ("distributed.launch",),  # multi_gpu: checks a launch before any model loads
    ("tracking",),
    ("runs",),
    ("registry",),
    ("train",),
    ("preference",),  # preference_tuning: pairs from the SFT model, the DPO recipe
    ("sweep",),  # sweeps: trials of train()
    ("export",),  # llama_cpp: a run's model as a GGUF file, opened with llama.cpp (evaluate and serve use it)
    ("evaluate",),
    ("report",),
    ("publish",),
    ("monitor",),
    ("serve",),
    ("distributed.vllm",),
    ("clouds",),
    ("cli", "__main__"),
]


def stage_of(module: str) -> int:
    relative = module.removeprefix(PACKAGE).lstrip(".")
    if not relative:
        return 0  # the package's __init__
    for index, prefixes in enumerate(STAGES):
        if any(relative == prefix or relative.startswith(f"{prefix}.") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no stage of STAGES: add it there and to docs/architecture.md")


def test_no_module_imports_a_later_stage():
    late = sorted(
        f"{name} imports {imported}"
        for name, imports in GRAPH.items()
        for imported in imports
        if stage_of(imported) > stage_of(name)
    )
    assert late == []


def test_the_stage_check_sees_a_late_import():
    assert stage_of(f"{PACKAGE}.train.sft") > stage_of(f"{PACKAGE}.data.dataset")
    assert stage_of(f"{PACKAGE}.cli") == len(STAGES) - 1


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_is_longer_than_the_limit():
    too_long = [
        f"{path.relative_to(SOURCE.parent)}:{node.lineno} {node.name}() is {node.end_lineno - node.lineno + 1} lines"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"split these (limit {MAX_FUNCTION_LINES} lines):\n" + "\n".join(too_long)


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """How many arguments a function takes, `self`/`cls` aside."""
    args = node.args
    names = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]
    return len([arg for arg in names if arg.arg not in ("self", "cls")])


def is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A Typer command or callback: its options are its parameters, so it may take many."""
    return any(
        isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") in ("command", "callback")
        for decorator in node.decorator_list
    )


def test_no_function_takes_more_than_the_limit_of_parameters():
    """Many related arguments travel as one object (train.sft.Run, publish.PublishRequest), not as long lists."""
    too_many = [
        f"{path.relative_to(SOURCE.parent)}:{node.lineno} {node.name}() takes {parameters(node)}"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and parameters(node) > MAX_PARAMETERS
        and not is_command(node)
    ]
    assert not too_many, f"group these into an object (limit {MAX_PARAMETERS}):\n" + "\n".join(too_many)


def test_the_parameter_count_sees_keyword_only_arguments_and_skips_self():
    [node] = ast.parse("def f(self, a, /, b, *c, d, e=1, **f): pass").body
    assert parameters(node) == 6


@pytest.mark.parametrize("name", sorted(name for name in MODULES if not name.endswith(".__main__")))  # runs the CLI
def test_every_module_imports(name):
    """Each module imports on its own; cloud SDKs are imported inside functions, so no extra is needed."""
    assert importlib.import_module(name).__name__ == name
