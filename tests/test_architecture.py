"""The package's layering: no import cycles, the library never imports a command-line shell,
and the training core reaches loss families only through the generic batch-extra hook."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "itm_jax"


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every ``itm_jax`` module and the ``itm_jax`` modules it imports, anywhere in its code
    (function-level imports included: a cycle through a lazy import is still a cycle)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_import_cycles():
    graph = _imports()
    # Importing a package runs its __init__; a submodule importing its own package's __init__
    # is not a cycle of ours to break, so those edges are left out.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            assert state.get(t) != "open", "import cycle: " + " -> ".join(
                stack[stack.index(t):] + [t])
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_only_command_line_modules_import_command_line_modules():
    shells = {m for m in _imports() if m.startswith("itm_jax.cli")} | {"itm_jax.main"}
    for module, targets in _imports().items():
        if module not in shells:
            assert not targets & shells, (module, targets & shells)


def test_the_training_core_names_no_loss_family():
    core = [PACKAGE / "experiment.py", *sorted((PACKAGE / "training").glob("*.py"))]
    for path in core:
        text = path.read_text().lower()
        for word in ("aoq", "offline"):
            assert word not in text, (path.name, word)
