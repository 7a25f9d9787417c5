"""The package's layout, read from its own imports: no module imports another in a
circle (imports inside functions count; those under `if TYPE_CHECKING:` do not),
and no module imports another's private (underscore) names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mailmand"
# Written into the package by the PyInstaller build (build.spec), absent from a checkout.
GENERATED = {"mailmand._build"}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every import statement of a module, wherever it sits, but under `if TYPE_CHECKING:`."""

    def __init__(self, module: str, package: bool) -> None:
        self.module, self.package = module, package
        self.found: list[tuple[str, str | None, int]] = []  # (module, imported name or None, line)

    def visit_If(self, node: ast.If) -> None:
        if _type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, None, node.lineno) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".")
            parts = parts if self.package else parts[:-1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join([*parts, *([base] if base else [])])
        self.found += [(base, alias.name, node.lineno) for alias in node.names]


def imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, str | None, int]]]:
    """Each module's imports of the package's own modules: (target module, name, line)."""
    out: dict[str, list[tuple[str, str | None, int]]] = {}
    for name, path in mods.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for target, imported, line in visitor.found:
            if target.split(".")[0] != "mailmand":
                continue
            if imported and f"{target}.{imported}" in mods | dict.fromkeys(GENERATED):
                target, imported = f"{target}.{imported}", None  # `from . import x`: the module x
            if target in GENERATED:
                continue
            assert target in mods, f"{name}:{line} imports {target}, which is not in the package"
            out.setdefault(name, []).append((target, imported, line))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph_of(found: dict[str, list[tuple[str, str | None, int]]]) -> dict[str, set[str]]:
    return {name: {t for t, _, _ in targets if t != name} for name, targets in found.items()}


def test_no_module_imports_another_in_a_circle():
    found = imports(modules())
    circles = cycles(graph_of(found))
    detail = [f"{m} -> {t} (line {line})" for circle in circles for m in circle
              for t, _, line in found.get(m, ()) if t in circle and t != m]
    assert circles == [], "import circles:\n" + "\n".join(detail)


def test_no_module_imports_another_modules_private_names():
    private = [f"{name}:{line} imports {imported} from {target}"
               for name, targets in imports(modules()).items() for target, imported, line in targets
               if imported and imported.startswith("_") and not imported.startswith("__")]
    assert private == []


# -- the checks can fail -------------------------------------------------------------------


@pytest.fixture
def fake_package(tmp_path):
    def make(files: dict[str, str]) -> dict[str, Path]:
        root = tmp_path / "mailmand"
        for rel, text in {"__init__.py": "", **files}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return modules(root)

    return make


def test_a_circle_through_an_import_inside_a_function_is_found(fake_package):
    mods = fake_package({"a.py": "from . import b\n",
                         "b.py": "def f():\n    from .sub.c import x\n",
                         "sub/__init__.py": "",
                         "sub/c.py": "def g():\n    from ..a import y\n"})
    assert cycles(graph_of(imports(mods))) == [["mailmand.a", "mailmand.b", "mailmand.sub.c"]]


def test_imports_under_type_checking_do_not_count(fake_package):
    mods = fake_package({"a.py": "from . import b\n",
                         "b.py": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from .a import A\nelse:\n    pass\n"})
    assert cycles(graph_of(imports(mods))) == []
    mods = fake_package({"a.py": "from . import b\n",
                         "b.py": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    pass\nelse:\n    from .a import A\n"})
    assert cycles(graph_of(imports(mods))) == [["mailmand.a", "mailmand.b"]]


def test_a_private_name_import_is_found(fake_package):
    mods = fake_package({"a.py": "from .b import _hidden, __version__\n", "b.py": ""})
    assert [(t, n) for t, n, _ in imports(mods)["mailmand.a"]] == [("mailmand.b", "_hidden"),
                                                                    ("mailmand.b", "__version__")]
