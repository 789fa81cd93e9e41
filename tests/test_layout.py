"""The import graph of ``seal_env``, ``agents`` and ``benchmarks``: no cycles, and no module imports from a layer
above its own. Every import counts, also those inside functions (they hide a cycle, they do not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("seal_env", "agents", "benchmarks")

#: The layers of seal_env, lowest first: a module may import from its own layer and the layers below it only.
#: ``seal_env`` itself (the package's face: registration and re-exports) and ``seal_env.__main__``-style entry
#: points sit above all of them.
SEAL_ENV_LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "seal_env._blas",
        "seal_env._version",
        "seal_env.env_vars",
        "seal_env.seeding",
        "seal_env.stats",
        "seal_env.journal",
    ),
    ("seal_env.config", "seal_env.judge", "seal_env.articles", "seal_env.prompts", "seal_env.spaces"),
    ("seal_env.models",),
    ("seal_env.learner",),
    ("seal_env.reward",),
    ("seal_env.envs",),
    ("seal_env.executors",),
    ("seal_env.vector", "seal_env.integrations", "seal_env.serve", "seal_env.cli"),
)
#: The packages, lowest first.
PACKAGE_LAYERS = ("seal_env", "agents", "benchmarks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(name: str) -> tuple[int, int] | None:
    """(package layer, seal_env layer) of a module; None for the package face ``seal_env`` (above every layer)."""
    top = name.split(".")[0]
    if name == "seal_env":
        return None
    if top != "seal_env":
        return PACKAGE_LAYERS.index(top), len(SEAL_ENV_LAYERS)
    for i, members in enumerate(SEAL_ENV_LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members):
            return 0, i
    raise AssertionError(f"{name} is in no layer of tests/test_layout.py: add it to SEAL_ENV_LAYERS")


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_every_module_is_in_a_layer_and_no_module_imports_from_a_layer_above():
    edges = graph()
    upward = []
    for name, targets in edges.items():
        own = layer(name)
        for target in targets:
            other = layer(target)
            if other is None:
                if name.startswith("seal_env."):  # inside the package, import the module, not the face
                    upward.append(f"{name} -> seal_env")
            elif own is not None and other > own:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports from a layer above: " + ", ".join(sorted(upward))
