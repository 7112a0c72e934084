"""The package's shape: no import circles, and imports that point down the layers only.

The library layers (augmentation, data, training machinery, objectives and losses, the network,
evaluation, reference formats) never import the settings or the workflows built on them
(config, factory, the training loop, the runner, the command line).

Imports are read from the source (module level and inside functions alike), so a test fails
as soon as a change adds an upward import or closes a circle."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tf_simclr")

# The package's layers, bottom first (tf_simclr.<first part of a module's name>): a module
# imports only from its own layer or the ones below. Everything up to `reference` is the
# library, usable without a Config; the settings, the factory and the workflows sit on top.
LAYERS = [
    # "": the package's __init__, which stays at the bottom so that `import tf_simclr` is light.
    {"", "validation", "choices", "onednn"},
    {"augment"},
    {"data"},
    {"training"},
    {"objectives"},
    {"network"},
    {"evaluation"},
    {"reference"},
    {"config_checks"},
    {"config"},
    {"factory"},
    {"workflows"},
    {"cli", "convert", "__main__"},
]
LIBRARY = set().union(*LAYERS[: LAYERS.index({"reference"}) + 1])


def _modules() -> dict[str, str]:
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:  # "from pkg import module" names a module
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_import_graph_is_read():
    graph = _import_graph()
    assert "tf_simclr.objectives.contrastive" in graph["tf_simclr.objectives"]
    assert "tf_simclr.config" in graph["tf_simclr.cli"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert _circles(_import_graph()) == []


def _rank(module: str) -> int:
    layer = _layer(module)
    ranks = [rank for rank, members in enumerate(LAYERS) if layer in members]
    assert ranks, f"{module}: place its layer ({layer!r}) in LAYERS"
    return ranks[0]


def test_imports_point_down_the_layers_only():
    graph = _import_graph()
    upward = sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if _rank(target) > _rank(module)
    )
    assert upward == []


def test_library_layers_never_import_settings_or_workflows():
    graph = _import_graph()
    upward = {
        module: sorted(t for t in targets if _layer(t) not in LIBRARY)
        for module, targets in graph.items()
        if _layer(module) in LIBRARY
    }
    assert {module: found for module, found in upward.items() if found} == {}
