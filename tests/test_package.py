"""The package as a product: its layout (the experiments kept apart, no import cycle in ``data/``) and its commands."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
from conftest import CONFIGS, REPO

PACKAGE = REPO / "refineformer3d"
EXPERIMENTS = "refineformer3d.experiments"
# Configs that are experiments themselves, and so may name the experiments' code.
EXPERIMENT_CONFIGS = {"distill.json"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _nodes(tree: ast.AST):
    """Every node of a module, functions' bodies included; ``if TYPE_CHECKING:`` blocks never run, so not those."""
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking(node):
            yield from (n for orelse in node.orelse for n in [orelse, *_nodes(orelse)])
            continue
        yield node
        yield from _nodes(node)


def imports_of(name: str, source: str | None = None) -> set[str]:
    """The modules (of any package) that module ``name`` imports anywhere in its code, relative imports resolved.

    ``from pkg import x`` imports ``pkg.x`` where that is a module of this package, else ``pkg``; a constant name
    handed to ``importlib.import_module`` counts as an import.
    """
    path = MODULES.get(name)
    tree = ast.parse(source if source is not None else path.read_text())
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module)
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).endswith("import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            found.add(node.args[0].value)
    return found


def _experiments_imported(imports: set[str]) -> list[str]:
    return sorted(m for m in imports if m == EXPERIMENTS or m.startswith(EXPERIMENTS + "."))


def _is_experiment(name: str) -> bool:
    return name == EXPERIMENTS or name.startswith(EXPERIMENTS + ".")


def data_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> the modules it imports) as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return [*stack[stack.index(imported) :], imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def _data_graph(overrides: dict[str, str] | None = None) -> dict[str, set[str]]:
    data = [m for m in MODULES if m == "refineformer3d.data" or m.startswith("refineformer3d.data.")]
    return {m: {i for i in imports_of(m, (overrides or {}).get(m)) if i in data and i != m} for m in data}


def test_no_product_module_imports_the_experiments():
    found = {name: _experiments_imported(imports_of(name)) for name in MODULES if not _is_experiment(name)}
    offenders = {name: modules for name, modules in found.items() if modules}
    assert not offenders, f"product modules import the experiments: {offenders}"
    assert any(_is_experiment(name) for name in MODULES), "the experiments package is where this test expects it"


def test_only_experiment_configs_name_the_experiments():
    naming = sorted(p.name for p in CONFIGS.glob("*.json") if EXPERIMENTS in p.read_text())
    assert set(naming) <= EXPERIMENT_CONFIGS, f"product configs name {EXPERIMENTS}: {naming}"


def test_data_has_no_import_cycle():
    graph = _data_graph()
    assert "refineformer3d.data.validation" in graph["refineformer3d.data.datalist"]  # the walk sees the imports
    cycle = data_cycle(graph)
    assert cycle is None, f"import cycle in refineformer3d/data: {' -> '.join(cycle)}"


@pytest.mark.parametrize(
    "module, added",
    [
        ("refineformer3d.handlers", "from refineformer3d.experiments.summary import count_flops"),
        ("refineformer3d.data.datalist", "from ..experiments import study"),
        ("refineformer3d.segment", "import refineformer3d.experiments.benchmark"),
        ("refineformer3d.onnx", "from refineformer3d import experiments"),
    ],
)
def test_the_experiments_check_finds_an_import_inside_a_function(module, added):
    source = MODULES[module].read_text() + f"\n\ndef _uses_an_experiment():\n    {added}\n"
    assert _experiments_imported(imports_of(module, source))


def test_the_cycle_check_finds_a_cycle_made_inside_a_function():
    validation = "refineformer3d.data.validation"
    source = MODULES[validation].read_text() + "\n\ndef _late():\n    from .datalist import load_datalist\n"
    cycle = data_cycle(_data_graph({validation: source}))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {validation, "refineformer3d.data.datalist"} <= set(cycle)


def _scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml (read without tomllib, which Python 3.10 lacks)."""
    table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    return dict(re.findall(r'^([\w-]+) = "([\w.]+:\w+)"$', table.group(1), re.M))


SCRIPTS = _scripts()


def test_every_user_facing_command_is_a_console_script():
    assert len(SCRIPTS) >= 11 and all(name.startswith("refineformer3d-") for name in SCRIPTS)
    # every module with a command line (an ``if __name__ == "__main__":`` or a __main__.py) has a console script
    commands = {
        name.removesuffix(".__main__")
        for name, path in MODULES.items()
        if path.name == "__main__.py" or re.search(r'^if __name__ == "__main__":', path.read_text(), re.M)
    }
    targets = {target.partition(":")[0] for target in SCRIPTS.values()}
    missing = sorted(c for c in commands if not any(t == c or t.startswith(c + ".") for t in targets))
    assert not missing, f"commands without a console script in pyproject.toml: {missing}"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help_says_what_it_does_in_one_line(script, capsys, monkeypatch):
    module, _, function = SCRIPTS[script].partition(":")
    main = getattr(importlib.import_module(module), function)
    # the console script's exit status is what main returns: an int, never a report or a table
    assert inspect.signature(main).return_annotation in (int, "int"), f"{script}: {module}.main must return an int"
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps to the terminal: one line stays one line
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    usage, description = out.split("\n\n")[:2]
    assert usage.startswith("usage:")
    assert "\n" not in description and description.endswith(".") and 20 < len(description) <= 160, description
