"""No import cycle in `keras_optx`: the modules' imports, read from the source, form no loop.

Every `.py` file of the package is parsed (new modules are found by the walk) and every import in
it counts, at module level or inside a function: a function-level import that closes a loop is a
cycle too, only deferred. `from package import name` is an edge to the submodule `package.name`
when there is one, else to `package` itself (the name comes from its `__init__`). Importing a
submodule does not count as importing its parent package's `__init__` (Python runs that first, but
every module would then be in a loop with `keras_optx/__init__.py`, which imports them all).

The layering this keeps: rule modules, `_base`, `_hyper` and `_tensors` reach the backend through
`keras_optx._backends`, which imports no rule; the torch kernels import the rule classes they serve
and are imported by `keras_optx/__init__.py` alone, after the rules.
"""

import ast
import pathlib

import pytest

import keras_optx

PACKAGE = pathlib.Path(keras_optx.__file__).parent


def module_name(path, root=PACKAGE):
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources):
    """`{module: {imported module: first line}}` for `sources` = `{module name: (source, is_package)}`,
    keeping only modules among `sources`."""
    known = set(sources)
    graph = {}
    for name, (source, is_package) in sources.items():
        edges = graph.setdefault(name, {})
        package = name if is_package else name.rpartition(".")[0]

        def add(target, line):
            if target in known and target != name:
                edges.setdefault(target, line)

        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    # `import a.b.c` imports a, a.b and a.b.c; the deepest known one is the edge
                    for k in range(len(parts), 0, -1):
                        if ".".join(parts[:k]) in known:
                            add(".".join(parts[:k]), node.lineno)
                            break
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base + (node.module.split(".") if node.module else []))
                else:
                    base = node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    add(full if full in known else base, node.lineno)
    return graph


def cycles(graph):
    """One cycle per strongly connected component of more than one module: `[[a, b, …, a]]`."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):  # Tarjan's algorithm (the package is small: recursion is fine)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_loop_through(graph, set(component), min(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _loop_through(graph, component, start):
    """A shortest path start → … → start inside `component` (breadth first)."""
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w in component and w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no loop through {start} in {component}")


def package_sources(root=PACKAGE):
    return {module_name(p, root): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in sorted(root.rglob("*.py"))}


def _describe(graph, loop):
    return " → ".join(f"{a} (line {graph[a][b]})" for a, b in zip(loop, loop[1:])) + f" → {loop[-1]}"


def test_the_scan_finds_every_form_of_import_and_names_the_loop():
    sources = {
        "pkg": ("from . import rules\nfrom .backend import kernels\n", True),
        "pkg.rules": ("from ._base import Rule\n", False),
        "pkg._base": ("import pkg.backend\n", False),
        "pkg.backend": ("def load():\n    from . import kernels\n", True),
        "pkg.backend.kernels": ("from ..rules import Rule\nfrom . import helper_name\n", False),
    }
    graph = import_graph(sources)
    assert graph["pkg.backend.kernels"] == {"pkg.rules": 1, "pkg.backend": 2}
    assert graph["pkg"] == {"pkg.rules": 1, "pkg.backend.kernels": 2}
    (loop,) = cycles(graph)
    assert loop[0] == loop[-1] and set(loop) == {"pkg._base", "pkg.backend", "pkg.backend.kernels", "pkg.rules"}
    # The fix this test asks for: the kernels are imported by the package root, not the backend.
    sources["pkg.backend"] = ("", True)
    assert cycles(import_graph(sources)) == []


def test_the_walk_sees_every_module():
    names = set(package_sources())
    assert {"keras_optx._base", "keras_optx.adam", "keras_optx._backends.torch.kernels", "keras_optx.compare.api"} <= names
    assert all(name.startswith("keras_optx") for name in names)


def test_no_import_cycle_in_keras_optx():
    graph = import_graph(package_sources())
    found = cycles(graph)
    assert not found, "import cycles (each through its first import lines):\n" + "\n".join(_describe(graph, c) for c in found)


@pytest.mark.parametrize("core", ["keras_optx._base", "keras_optx._hyper", "keras_optx._tensors"])
def test_the_core_reaches_no_kernel(core):
    graph = import_graph(package_sources())
    seen, pending = set(), [core]
    while pending:
        for w in graph[pending.pop()]:
            if w not in seen:
                seen.add(w)
                pending.append(w)
    kernels = sorted(m for m in seen if m.startswith("keras_optx._backends.torch.") and m.rsplit(".", 1)[1] in ("kernels", "transforms"))
    assert not kernels, f"{core} imports, through others, the kernel modules {kernels}"
