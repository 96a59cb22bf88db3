"""Imports run one way (docs/architecture.md): read every module's imports with ``ast``
(module level, inside functions and under TYPE_CHECKING alike; ``from . import x``
resolved) and fail on a cycle between layers or on an import the table below does not
allow. A failure names the importing file, the line and the import.

A *layer* is a top-level package or module of ``entryguard`` (``edge``, ``relay``,
``server_cli``…); inside ``control``, each subpackage or module is one (``control.api``,
``control.services``, ``control.db``, ``control.web``, ``control.runner``…).
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import entryguard

SRC = Path(entryguard.__file__).resolve().parent
ROOT = "entryguard"

# Imported by anyone: no I/O policy, no knowledge of the processes.
NEUTRAL = frozenset({ROOT, "clock", "errors", "durations", "backoff", "aio", "console"})
# control.errors is being replaced by entryguard.errors + control.http_errors.
_CONTROL_CORE = frozenset({"control.errors", "control.settings"})
_HTTP = frozenset({"control.http_errors"})  # how an EntryGuardError looks over HTTP

# layer -> the layers it may import besides itself and NEUTRAL. A layer missing here
# fails the test: a new package takes a row (and a line in docs/architecture.md).
ALLOWED: dict[str, frozenset[str]] = {
    # the neutral modules may use one another (a cycle among them still fails)
    **{name: frozenset() for name in NEUTRAL},
    # the bottom: pure protocol and data, no asyncio policy of ours
    # sans-I/O: of the neutral modules only the error root, which imports nothing
    # (checked below)
    "mux": frozenset({"errors"}),
    "net": frozenset(),
    "sync": frozenset({"net"}),
    # asyncio glue shared by edge and agent
    "relay": frozenset({"mux", "net"}),
    # the processes' own packages
    "edge": frozenset({"relay", "mux", "net", "sync"}),
    "agent": frozenset({"relay", "mux", "net"}),
    "cli": frozenset({"relay", "net"}),
    # the control plane, top to bottom: app/runner -> api|web -> services -> db
    "control": frozenset(),
    "control.errors": frozenset(),
    "control.http_errors": frozenset(),
    "control.settings": frozenset({"net"}),
    "control.tls": frozenset(),
    "control.body_limit": frozenset(),
    "control.db": frozenset({"sync", "net"} | _CONTROL_CORE),
    "control.auth": frozenset({"control.db"} | _CONTROL_CORE),
    "control.services": frozenset({"control.db", "control.auth", "sync", "net"} | _CONTROL_CORE),
    # the API speaks the edges' stream protocol (sync.stream), so it may import sync
    "control.api": frozenset(
        {"control.services", "control.auth", "control.db", "net", "sync"} | _CONTROL_CORE | _HTTP
    ),
    "control.web": frozenset(
        {"control.services", "control.auth", "control.db", "net"} | _CONTROL_CORE | _HTTP
    ),
    "control.bootstrap": frozenset({"control.db", "control.services"} | _CONTROL_CORE),
    "control.banner": frozenset({"control.bootstrap"} | _CONTROL_CORE),
    "control.app": frozenset(
        {
            "control.api",
            "control.web",
            "control.services",
            "control.db",
            "control.auth",
            "control.body_limit",
        }
        | _CONTROL_CORE
        | _HTTP
    ),
    "control.runner": frozenset(
        {
            "control.app",
            "control.banner",
            "control.bootstrap",
            "control.db",
            "control.services",
            "net",
        }
        | _CONTROL_CORE
    ),
    # the composition root (`entryguard up`) and the `entryguard` command line
    "runtime": frozenset({"control.runner", "control.db", "edge", "net"} | _CONTROL_CORE),
    "server_cli": frozenset(
        {
            "runtime",
            "edge",
            "net",
            "control.runner",
            "control.bootstrap",
            "control.db",
            "control.services",
            "control.tls",
        }
        | _CONTROL_CORE
    ),
}

# Breaches that stand today, each with the work that removes it. The test fails when
# one no longer occurs, so the entry goes with the fix.
KNOWN_BREACHES: dict[tuple[str, str], str] = {
    # Dashboard routes call the API's routers and dependencies (STYLE.md "routers
    # calling routers"); being moved onto control.services by the typed-results work.
    ("control.web", "control.api"): "web routes reuse api routers (typed-results work)",
}

# Only the composition root and the command line that starts it see both sides.
BOTH_SIDES_ALLOWED = frozenset({"runtime", "server_cli"})


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (or package)
    path: Path  # relative to src/
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return ROOT
    if parts[0] == "control" and len(parts) > 1:
        return f"control.{parts[1]}"
    return parts[0]


@cache
def read_imports(src: Path = SRC) -> list[Import]:
    """Every import of an ``entryguard`` module by a module under ``src``."""
    paths = sorted(src.rglob("*.py"))
    modules = {module_name(p, src) for p in paths}
    found: list[Import] = []
    for path in paths:
        name = module_name(path, src)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    stem = node.module or ""
                # `from pkg import sub` imports the submodule when there is one
                targets = [
                    f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                if target == ROOT or target.startswith(ROOT + "."):
                    found.append(Import(name, target, path.relative_to(src.parent), node.lineno))
    return found


def layer_edges(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        a, b = layer_of(imp.source), layer_of(imp.target)
        if a != b:
            edges[(a, b)].append(imp)
    return edges


def find_cycles(edges: dict[tuple[str, str], list[Import]]) -> list[list[str]]:
    """Strongly connected components of more than one layer (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def shortest_cycle(component: list[str], edges: dict[tuple[str, str], list[Import]]) -> list[str]:
    """A shortest loop through the component's first layer: ``[a, b, …, a]``."""
    members = set(component)
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for a, b in sorted(edges):
                if a != v or b not in members:
                    continue
                if b == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if b not in came_from:
                    came_from[b] = v
                    following.append(b)
        frontier = following
    raise AssertionError(f"no loop through {start}")


def test_no_cycle_between_layers() -> None:
    edges = layer_edges(read_imports())
    problems = []
    for component in find_cycles(edges):
        loop = shortest_cycle(component, edges)
        lines = [f"cycle: {' -> '.join(loop)}  (layers in the cycle: {', '.join(component)})"]
        for a, b in itertools.pairwise(loop):
            imps = sorted(set(edges[(a, b)]), key=lambda i: (str(i.path), i.line))
            more = f"   (+{len(imps) - 2} more)" if len(imps) > 2 else ""
            lines += [f"  {imp}" for imp in imps[:2]]
            lines[-1] += more
        problems.append("\n".join(lines))
    assert not problems, "\n".join(problems)


def test_imports_follow_the_table() -> None:
    edges = layer_edges(read_imports())
    problems = []
    for (a, b), imps in sorted(edges.items()):
        if a not in ALLOWED:
            problems.append(f"layer {a} has no row in ALLOWED (tests/unit/test_layering.py)")
            continue
        allowed = ALLOWED[a] if a == "mux" else ALLOWED[a] | NEUTRAL
        if b in allowed or (a, b) in KNOWN_BREACHES:
            continue
        problems.extend(f"{imp}: {a} may not import {b}" for imp in imps)
    assert not problems, "\n".join(sorted(set(problems)))


def test_only_the_composition_root_sees_control_and_edge() -> None:
    sides: dict[str, set[str]] = defaultdict(set)
    for a, b in layer_edges(read_imports()):
        if b == "edge" or b.startswith("control"):
            sides[a].add("edge" if b == "edge" else "control")
    both = sorted(a for a, s in sides.items() if len(s) == 2 and a not in BOTH_SIDES_ALLOWED)
    assert not both, f"only {sorted(BOTH_SIDES_ALLOWED)} may import control and edge: {both}"


def test_known_breaches_still_exist() -> None:
    edges = layer_edges(read_imports())
    gone = [f"{a} -> {b}" for a, b in KNOWN_BREACHES if (a, b) not in edges]
    assert not gone, f"fixed: remove from KNOWN_BREACHES in this test: {gone}"


def test_the_reader_sees_hidden_and_relative_imports(tmp_path: Path) -> None:
    """What a cycle is easiest to hide with: an import inside a function, one under
    TYPE_CHECKING, ``from . import x`` and ``from .. import x``."""
    src = tmp_path / "entryguard"
    files = {
        "__init__.py": "",
        "relay/__init__.py": "from . import link\n",
        "relay/link.py": "def f():\n    from entryguard.edge import service\n",
        "edge/__init__.py": "",
        "edge/service.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..relay import link\n",
        "control/__init__.py": "",
        "control/api/__init__.py": "from ..services import grants\n",
        "control/services/__init__.py": "",
        "control/services/grants.py": "import entryguard.control.api\n",
    }
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    found = {(i.source, i.target, str(i.path), i.line) for i in read_imports(src)}
    assert found == {
        ("entryguard.relay", "entryguard.relay.link", "entryguard/relay/__init__.py", 1),
        ("entryguard.relay.link", "entryguard.edge.service", "entryguard/relay/link.py", 2),
        ("entryguard.edge.service", "entryguard.relay.link", "entryguard/edge/service.py", 3),
        (
            "entryguard.control.api",
            "entryguard.control.services.grants",
            "entryguard/control/api/__init__.py",
            1,
        ),
        (
            "entryguard.control.services.grants",
            "entryguard.control.api",
            "entryguard/control/services/grants.py",
            1,
        ),
    }
    cycles = find_cycles(layer_edges(read_imports(src)))
    assert sorted(cycles) == [["control.api", "control.services"], ["edge", "relay"]]
