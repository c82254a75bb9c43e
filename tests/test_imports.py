"""The packages' imports: no circle among the modules, a TensorFlow-free config, and
packages that import without side effects."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harr_tf", "serving", "tuning")


def project_modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its `__init__.py`)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def module_level_imports(tree: ast.Module):
    """The import statements that run when the module is imported: those outside
    function bodies (inside `if`, `try` or class bodies too)."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))


def lazy_names(tree: ast.Module, modules: dict[str, Path]) -> dict[str, str]:
    """A package's names loaded on first use (PEP 562 `__getattr__`), read from the
    module-level dict literals that map a name to the project module defining it."""
    names = {}
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Dict):
            for key, target in zip(value.keys, value.values, strict=True):
                constant = isinstance(key, ast.Constant) and isinstance(target, ast.Constant)
                if constant and target.value in modules:
                    names[key.value] = target.value
    return names


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules its module-level imports load.

    `import a.b.c` loads a, a.b and a.b.c (a module's own packages are already loading);
    `from p import n` loads p.n when that is a module, else p, and for a name p loads
    lazily, the module p takes it from.
    """
    modules = project_modules()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in modules.items()}
    lazy = {name: lazy_names(tree, modules) for name, tree in trees.items()}
    graph = {}
    for name, tree in trees.items():
        is_package = modules[name].name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets = []
        for node in module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
                if alias.name in lazy.get(base, {}):
                    targets.append(lazy[base][alias.name])
        loaded = set()
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                module = ".".join(parts[:end])
                own_package = name.startswith(module + ".") and module != target
                if module in modules and module != name and not own_package:
                    loaded.add(module)
        graph[name] = loaded
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_circle_among_the_modules():
    """Module-level imports only (function-level ones run later, when the importing
    module is complete); every module of harr_tf, serving and tuning."""
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_walk_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_config_loads_no_tensorflow_or_keras():
    result = run_python(
        "import harr_tf.config, sys; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))[:5]"
    )
    assert result.returncode == 0, result.stderr


def test_importing_the_packages_changes_nothing_of_the_process():
    """No TensorFlow loaded, no environment variable set, no logging configured, and
    stderr is still the process's own, even while Python starts `python -m serving.export`
    (the packages are imported first then)."""
    result = run_python(
        "import logging, os, sys; "
        "sys.argv, sys.orig_argv = ['-m'], [sys.executable, '-m', 'serving.export']; "
        "environment, stderr = dict(os.environ), os.fstat(2); "
        "import harr_tf, serving, tuning; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        "assert dict(os.environ) == environment; "
        "assert os.fstat(2) == stderr; "
        "assert not logging.getLogger().handlers and logging.getLogger().level == logging.WARNING"
    )
    assert result.returncode == 0, result.stderr
