"""The package's layers: core <- adapters <- applications, and no import cycle anywhere.

* The static import graph of ``jiio_ext`` and ``adapters`` (installed as
  ``jiio_ext.adapters``), read with ``ast`` and counting the imports inside functions and
  ``TYPE_CHECKING`` blocks too, has no cycle. The checker itself is tested on small synthetic
  packages, with and without a cycle.
* No core module (``jiio_ext`` outside ``jiio_ext.apps``) imports an application or an adapter
  module, statically.
* The core imports with torch alone: in a fresh interpreter whose import system refuses the
  optional libraries (and numpy, and tqdm), ``jiio_ext``, every core submodule and every lazy
  attribute of the package import, and no ``jiio_ext.apps`` or ``jiio_ext.adapters`` module
  is loaded on the way.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (package name, source folder) of what is installed: the adapters live apart from jiio_ext
PACKAGES = (("jiio_ext", ROOT / "jiio_ext"), ("jiio_ext.adapters", ROOT / "adapters"))
APPLICATION_PREFIXES = ("jiio_ext.apps", "jiio_ext.adapters")
OPTIONAL = (
    "torchdeq",
    "torchattacks",
    "torchvision",
    "higher",
    "kornia",
    "sklearn",
    "matplotlib",
    "numpy",
    "tqdm",
)


def module_files(packages) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under the given package folders."""
    files: dict[str, Path] = {}
    for package, folder in packages:
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


def _imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that an ``import`` anywhere in ``tree`` loads."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):  # every statement, also inside functions and if-blocks
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # a submodule, or a name defined in the package
                name = f"{base}.{alias.name}"
                found.add(name if name in known else base)
    return found & known


def import_graph(packages) -> dict[str, set[str]]:
    """Edges ``module -> modules of the same packages it imports`` (static, with ``ast``).

    ``from package import name`` counts as an edge to ``package.name`` when that is a module,
    else to ``package``; the implicit imports of parent packages are not edges (Python runs a
    parent's ``__init__`` first, which is no cycle by itself).
    """
    files = module_files(packages)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = _imported_modules(tree, module, path.name == "__init__.py", set(files))
        graph[module] = found - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def _describe(graph: dict[str, set[str]], cycle: list[str]) -> str:
    members = set(cycle)
    return "; ".join(f"{m} -> {sorted(graph[m] & members)}" for m in cycle)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


def test_the_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    folder = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "def late():\n    from .sub import c\n",
            "sub/__init__.py": "",
            "sub/c.py": "import pkg.a\n",
            "d.py": "from pkg.a import something\n",  # into the cycle, not part of it
        },
    )
    graph = import_graph([("pkg", folder)])
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.d"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_the_checker_accepts_a_layered_package(tmp_path):
    folder = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.core import run\n",
            "core.py": "import torch\n\ndef run():\n    return torch\n",
            "app.py": "from pkg import core\nfrom . import run\n",
        },
    )
    graph = import_graph([("pkg", folder)])
    assert graph == {"pkg": {"pkg.core"}, "pkg.core": set(), "pkg.app": {"pkg", "pkg.core"}}
    assert find_cycles(graph) == []
    assert find_cycles({"x": {"x"}, "y": set()}) == []  # a self-import is no cycle


def test_no_import_cycle_in_the_package():
    graph = import_graph(PACKAGES)
    assert "jiio_ext.apps.cli" in graph and "jiio_ext.adapters.torchdeq" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


def _core_modules() -> list[str]:
    return sorted(m for m in module_files(PACKAGES) if not m.startswith(APPLICATION_PREFIXES))


def test_no_core_module_imports_an_application_or_an_adapter():
    graph = import_graph(PACKAGES)
    core = _core_modules()
    assert "jiio_ext.solve" in core and "jiio_ext.solvers.anderson" in core
    upward = {
        module: sorted(name for name in graph[module] if name.startswith(APPLICATION_PREFIXES))
        for module in core
    }
    upward = {module: names for module, names in upward.items() if names}
    assert not upward, f"core modules importing applications or adapters: {upward}"


_BLOCKED_IMPORT = """
import importlib, json, sys, warnings

BLOCKED = set({blocked!r})


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
        return None


sys.meta_path.insert(0, Refuse())
warnings.simplefilter("ignore")  # torch warns that numpy is missing
try:
    import torchdeq  # noqa: F401
except ModuleNotFoundError:
    refused = True
else:
    refused = False
import jiio_ext

for name in {modules!r}:
    importlib.import_module(name)
for name in jiio_ext.__all__:
    getattr(jiio_ext, name)  # the lazy attributes, too
loaded = sorted(
    name for name in sys.modules
    if name.startswith({prefixes!r}) or name.partition(".")[0] in BLOCKED
)
print(json.dumps({{"refused": refused, "loaded": loaded}}))
"""


def test_the_core_imports_with_torch_alone():
    modules = _core_modules()
    code = _BLOCKED_IMPORT.format(
        blocked=list(OPTIONAL), modules=modules, prefixes=APPLICATION_PREFIXES
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["refused"], "the import blocker let torchdeq through"
    assert result["loaded"] == [], f"the core loaded {result['loaded']}"
