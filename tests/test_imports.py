"""Imports run one way, down the data flow (DESIGN.md, "Layout"): the package's module graph
has no cycle. Every import counts, function-local ones included, since a local import that
only postpones a cycle to call time is still a cycle."""

import ast
from pathlib import Path

import rlhf_edu

PACKAGE = Path(rlhf_edu.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)  # "__init__" for the package itself


def _resolve(module: str, level: int, here: str) -> str | None:
    """The package-relative name ``from {'.' * level}{module} import ...`` means in ``here``,
    or None for a module outside the package."""
    if level == 0:
        if module != "rlhf_edu" and not module.startswith("rlhf_edu."):
            return None
        return module[len("rlhf_edu."):] if module != "rlhf_edu" else ""
    base = here.split(".")[:-1]  # the package ``here`` lives in
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement of ``tree`` that runs (``if TYPE_CHECKING:`` blocks never do)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def module_graph() -> dict[str, dict[str, int]]:
    """``graph[a][b]`` = the first line where package module ``a`` imports module ``b``."""
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(paths)

    def target(name: str) -> str:
        # "" and a subpackage's name are its __init__
        if name in known:
            return name
        return f"{name}.__init__" if name else "__init__"

    graph: dict[str, dict[str, int]] = {name: {} for name in paths}
    for here, path in paths.items():
        for node in _imports(ast.parse(path.read_text(), str(path))):
            found = []
            if isinstance(node, ast.Import):
                found = [_resolve(alias.name, 0, here) for alias in node.names]
            else:
                base = _resolve(node.module or "", node.level, here)
                if base is not None:
                    # "from . import sharding" imports the module sharding; "from . import X"
                    # of a name defined in __init__ imports __init__
                    subs = [f"{base}.{a.name}".lstrip(".") for a in node.names]
                    found = [sub if sub in known else base for sub in subs]
            for name in found:
                if name is None:
                    continue
                name = target(name)
                if name != here:
                    graph[here].setdefault(name, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def shortest_cycle(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest cycle inside ``component`` (a breadth-first search from each module),
    as ``[a, b, ..., a]``."""
    best: list[str] = []
    for start in component:
        paths, frontier = {start: [start]}, [start]
        while frontier and not (best and len(paths[frontier[0]]) >= len(best)):
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start and (not best or len(paths[v]) + 1 < len(best)):
                        best = paths[v] + [start]
                    elif w in component and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
    return best


def _describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    cycle = shortest_cycle(component, graph)
    edges = [f"    {a}.py:{graph[a][b]} imports {b}" for a in component
             for b in sorted(graph[a]) if b in component]
    return (" -> ".join(cycle) + f" (modules in the cycles: {', '.join(component)})\n"
            + "\n".join(edges))


def test_the_graph_sees_every_kind_of_import():
    graph = module_graph()
    assert "trainer" in graph["cli"]  # from .trainer import ...
    assert "sharding" in graph["trainer"]  # from . import distributed, sharding
    assert "advantages" in graph["ppo"]  # from rlhf_edu.advantages import ...
    assert "model" in graph["models"] and "validate" in graph["model"]
    assert graph["__init__"] and not graph["validate"]


def test_the_cycle_finder_finds_a_local_import_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 9}, "d": {"a": 3}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert shortest_cycle(["a", "b", "c"], graph) == ["a", "b", "c", "a"]
    graph["b"]["a"] = 4
    assert shortest_cycle(["a", "b", "c"], graph) == ["a", "b", "a"]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = module_graph()
    found = cycles(graph)
    assert not found, ("imports must run one way, down the data flow (DESIGN.md); cycles:\n"
                       + "\n".join(_describe(c, graph) for c in found))
