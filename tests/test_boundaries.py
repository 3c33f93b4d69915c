"""The package's shape, read from its source with `ast`: which module may import which.

Nothing here imports batchrun (except `import batchrun` in a subprocess, to see what it loads), so
a module that fails to import still has its boundaries checked.

The rules are tables, one row a rule:

- LAYERS: every batchrun package (or module) in one order, bottom first; a module imports only
  its own layer and the layers before it (no import back up a layer, so no circle between them).
- ONLY_IN: a third-party library and the packages that alone may import it.
- KNOWN_CYCLES, KNOWN_PACKAGE_CYCLES, KNOWN_PRIVATE: today's exceptions to "no import cycles"
  (between modules, and between the packages right below batchrun) and "no private module of
  another package". They are debts to pay off: each test also fails when an entry no longer
  happens, so a fixed exception must be struck from the list and the lists cannot rot.

Every import counts, wherever it is written (inside a function, under `if TYPE_CHECKING:`): an
import moved into a function or hidden from the interpreter still couples the two modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchrun"
ROOT = "batchrun"


@dataclass(frozen=True)
class Layer:
    scope: str  # a module or package; the layer holds everything under it (the root: itself only)
    why: str  # what it holds, and why it sits above the layers before it


# Bottom first. A module may import its own layer and the layers before it, never one after it;
# every batchrun module sits in exactly one layer. job, api, the root and the CLI are four layers,
# not one, because each imports the one before it (api runs jobs, the root re-exports api, the
# CLI reads `batchrun.__version__`): a shared layer would let the lower one import back up.
LAYERS = [
    Layer("batchrun.simulator",
          "the simulator checks the client: if it counted with the client's code, both would "
          "agree by construction and a test could pass on a shared mistake, so it imports nothing"),
    Layer("batchrun.errors", "the error tree and redaction: every layer raises and redacts"),
    Layer("batchrun.pacing", "the limiter, the calibration and the backoff: stdlib only"),
    Layer("batchrun.policy",
          "pure decisions (the validated Request, classification, sizing, tokens, tiers) import "
          "no I/O: files, http and the engine build on them"),
    Layer("batchrun.events", "what a job tells its listeners: carries policy's limits, prices"),
    Layer("batchrun.files", "the disk: input reader, checkpoint, ledger, manifests, locks"),
    Layer("batchrun.http", "one endpoint's client: sends policy's Request"),
    Layer("batchrun.routing", "the endpoints file and which endpoint takes a request"),
    Layer("batchrun.state", "the Gate (SQLite or Redis): reads an endpoints file's keys"),
    Layer("batchrun.backends", "the sync engine and the Batch API path, each returning a Stop"),
    Layer("batchrun.messages", "every sentence about how a job ended: words a backend's Stop"),
    Layer("batchrun.report", "what a job did or would do: reads the backends' plans and events"),
    Layer("batchrun.metrics", "--metrics-port: the events as Prometheus reads them, while a "
          "job runs; the API starts it"),
    Layer("batchrun.display", "rich: shows reports and events; only the CLI and progress=True"),
    Layer("batchrun.job", "one job from lock to end: picks a backend"),
    Layer("batchrun.api", "the Python API: runs jobs through batchrun.job"),
    Layer(ROOT, "the public names: re-exports the API"),
    Layer("batchrun.cli", "a thin client of the API"),
    Layer("batchrun.__main__", "python -m batchrun: starts the CLI"),
]

# A library and the only places that may import it: the display's library stays out of the core,
# so a library user (a notebook, a pipeline task) does not load it.
ONLY_IN = {
    "typer": ("batchrun.cli",),
    "rich": ("batchrun.cli", "batchrun.display"),
    # the `metrics` extra: a user without it must be able to import and run everything else
    "prometheus_client": ("batchrun.metrics",),
}

# Strongly connected groups of modules that import each other (directly or round a circle).
KNOWN_CYCLES: set[frozenset[str]] = set()

# The same between packages, each module counted as its package right below batchrun (a flat
# module is its own): a circle here is an import that runs back up a layer.
KNOWN_PACKAGE_CYCLES: set[frozenset[str]] = set()

# (importer, private module of another package).
KNOWN_PRIVATE: set[tuple[str, str]] = set()


# -- reading the source ---------------------------------------------------------------------------


@cache
def modules() -> dict[str, Path]:
    """Every batchrun module by dotted name; a package is its __init__.py."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def imported_names(name: str) -> Iterator[str]:
    """The absolute module names `name`'s source imports, relative imports resolved; for
    `from pkg import x`, pkg.x where x is a module, else pkg."""
    path = modules()[name]
    here = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in modules() else base


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the batchrun modules it imports (not itself)."""
    known = modules()
    return {name: frozenset(m for m in imported_names(name) if m in known and m != name)
            for name in known}


def within(name: str, scope: str) -> bool:
    return name == scope or name.startswith(scope + ".")


def cycles(edges: dict[str, frozenset[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def by_package(edges: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The graph between packages right below batchrun; a flat module is its own package."""
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    folded: dict[str, set[str]] = {top(name): set() for name in edges}
    for importer, targets in edges.items():
        folded[top(importer)].update(top(t) for t in targets if top(t) != top(importer))
    return {name: frozenset(targets) for name, targets in folded.items()}


def private_imports(edges: dict[str, frozenset[str]]) -> set[tuple[str, str]]:
    """(importer, module) where module's own name starts with `_` and importer is outside the
    package that holds it."""
    found = set()
    for importer, targets in edges.items():
        for target in targets:
            owner, _, leaf = target.rpartition(".")
            if leaf.startswith("_") and not within(importer, owner):
                found.add((importer, target))
    return found


# -- the checker checks ---------------------------------------------------------------------------


def test_the_reader_resolves_what_python_would_import() -> None:
    """Relative imports, `from pkg import module` and `from pkg import name` land on the module
    Python would load, so the rules below see real edges."""
    edges = graph()
    assert "batchrun.simulator.model" in edges["batchrun.simulator.batch_model"]
    assert "batchrun.state._gate" in edges["batchrun.state"]
    assert "batchrun.state" in edges["batchrun.job"]  # from batchrun.state import SharedBudget
    assert "batchrun.files.ledger" in edges["batchrun.state._open"]  # from batchrun import ledger


def test_cycles_finds_a_circle_and_nothing_else() -> None:
    edges = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}),
             "d": frozenset({"a"}), "e": frozenset()}
    assert cycles(edges) == {frozenset({"a", "b", "c"})}


# -- the rules ------------------------------------------------------------------------------------


def test_no_import_cycles_beyond_the_known_ones() -> None:
    found = cycles(graph())
    assert found - KNOWN_CYCLES == set(), "new import cycles"
    assert KNOWN_CYCLES - found == set(), "these cycles are gone: strike them from KNOWN_CYCLES"


def test_no_import_cycles_between_packages_beyond_the_known_ones() -> None:
    found = cycles(by_package(graph()))
    assert found - KNOWN_PACKAGE_CYCLES == set(), "an import runs back up a layer"
    assert KNOWN_PACKAGE_CYCLES - found == set(), (
        "these cycles are gone: strike them from KNOWN_PACKAGE_CYCLES")


def test_no_private_module_of_another_package_beyond_the_known_ones() -> None:
    found = private_imports(graph())
    assert found - KNOWN_PRIVATE == set(), "import the package's public name instead"
    assert KNOWN_PRIVATE - found == set(), "these are gone: strike them from KNOWN_PRIVATE"


def holds(scope: str, name: str) -> bool:
    return name == scope if scope == ROOT else within(name, scope)


def layer_of(name: str) -> int:
    """The position in LAYERS of the one layer that holds module `name`."""
    found = [n for n, layer in enumerate(LAYERS) if holds(layer.scope, name)]
    assert len(found) == 1, f"{name} sits in {len(found)} layers: give it one row in LAYERS"
    return found[0]


def test_every_layer_is_a_module_and_every_module_sits_in_one() -> None:
    assert [layer.scope for layer in LAYERS if layer.scope not in modules()] == []
    for name in modules():
        layer_of(name)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.scope)
def test_a_layer_imports_nothing_above_it(layer: Layer) -> None:
    level = LAYERS.index(layer)
    up = {(importer, target) for importer, targets in graph().items()
          if holds(layer.scope, importer) for target in targets if layer_of(target) > level}
    assert up == set(), layer.why


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_a_library_is_imported_only_where_it_may_be(library: str) -> None:
    places = ONLY_IN[library]
    users = {name for name in modules()
             if any(within(m, library) for m in imported_names(name))}
    assert users, f"nothing imports {library} any more: drop it from ONLY_IN"
    assert {u for u in users if not any(within(u, p) for p in places)} == set()


# What `import batchrun` must not load: the CLI's libraries (click comes with typer, but a module
# could import it on its own) and a server (aiohttp.web, the simulator that runs on it), which only
# --simulate and the tests start.
NOT_ON_IMPORT = ("typer", "rich", "click", "aiohttp.web", "batchrun.simulator",
                 "prometheus_client")


def test_import_batchrun_loads_neither_the_cli_libraries_nor_a_server() -> None:
    """A library user (a notebook, a pipeline task) should not pay for the CLI's display, nor
    for a web server it never starts."""
    probe = ("import sys, batchrun; "
             f"print(sorted(m for m in sys.modules if m.startswith({NOT_ON_IMPORT!r})))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True, cwd=PACKAGE.parent)
    assert run.stdout.strip() == "[]"


def test_the_state_package_loads_no_redis_client() -> None:
    """Its public names (the API and the CLI import them) must not cost a user without
    `--state redis://` the optional Redis client, or fail where it is not installed."""
    probe = ("import sys, batchrun.state; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis'}))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True, cwd=PACKAGE.parent)
    assert run.stdout.strip() == "[]"


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/helpers/ (fixtures in conftest.py or a plugin it
    registers): a test module imported by another runs its module-level code twice, drags its
    tests' imports along, and a helper found there gets edited for one test and breaks another."""
    tests = Path(__file__).resolve().parent
    while (tests.parent / "__init__.py").exists():  # the tests/ folder, from any depth below it
        tests = tests.parent

    def is_test_module(dotted: str) -> bool:
        leaf = dotted.rpartition(".")[2]
        return leaf.startswith("test_") or leaf == "conftest"

    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            found += [f"{path.relative_to(tests.parent)}:{node.lineno} imports {name}"
                      for name in names if is_test_module(name)]
    assert found == [], "move what is shared into tests/helpers/"
