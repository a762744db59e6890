"""The package's layering, read from its source with ``ast`` (every import, also those inside
functions; ``if TYPE_CHECKING:`` blocks are annotations and do not count):

* ``ir/`` and ``passes/`` import neither torch, onnx nor onnxruntime (nor ``os``, ``sys`` or
  file modules); nor do ``api.py``, the analysis, the options, the stages or the results;
* torch and onnx are imported by the frontends, emitters, runners and backends only;
* the CLI uses the public API only (the package root, ``idapgraph.review``, its own view);
* no two modules import each other, directly or through others;
* no function is longer than 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "idapgraph"
HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "onnx_graphsurgeon", "onnx_ir")
MAY_IMPORT_BACKENDS = ("idapgraph.frontends", "idapgraph.emit", "idapgraph.runners",
                       "idapgraph.backends")
PURE = ("idapgraph.ir", "idapgraph.passes", "idapgraph.api", "idapgraph.analysis",
        "idapgraph.options", "idapgraph.results", "idapgraph.stages", "idapgraph.pipeline")
CLI_MAY_USE = ("idapgraph", "idapgraph.review", "idapgraph.finetune", "idapgraph.cli_view")
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST):
    """Every node of ``tree`` except what ``if TYPE_CHECKING:`` guards."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in [child, *_walk(child)])
            continue
        yield node
        yield from _walk(node)


def imports(name: str) -> set[str]:
    path = MODULES[name]
    return imports_in(path.read_text(), name, path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    """Absolute names of what module ``name`` (of ``source``) imports: a submodule where
    ``from X import y`` names one, else ``X`` itself."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
    return out


def heavy(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in HEAVY}


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def import_cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import one another (directly or through others)."""
    g = nx.DiGraph()
    for m, targets in edges.items():
        g.add_node(m)
        g.add_edges_from((m, n) for n in targets if n in edges and n != m)
    return [c for c in nx.strongly_connected_components(g) if len(c) > 1]


def test_the_checker_sees_imports_inside_functions_and_skips_type_checking():
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import onnx\n"
           "def f():\n    import torch\n    from . import latency\n    from ..ir import graph\n")
    assert imports_in(src, "idapgraph.passes.probe", False) == {
        "typing", "torch", "idapgraph.passes.latency", "idapgraph.ir.graph"}
    assert heavy(imports_in(src, "idapgraph.passes.probe", False)) == {"torch"}


@pytest.mark.parametrize("name", [m for m in MODULES if under(m, PURE)])
def test_pure_layers_import_no_backend(name):
    assert not heavy(imports(name)), f"{name} imports {sorted(heavy(imports(name)))}"


SIDE_EFFECTS = {"os", "sys", "tempfile", "pathlib", "ctypes", "subprocess", "shutil", "io"}


@pytest.mark.parametrize("name", [m for m in MODULES if under(m, ("idapgraph.ir",
                                                                    "idapgraph.passes"))])
def test_passes_read_no_environment_and_touch_no_files(name):
    """The passes are functions of their arguments: the latency tables' disk cache, environment
    lookups and the solver's output filtering live on the runner side."""
    assert not imports(name) & SIDE_EFFECTS, sorted(imports(name) & SIDE_EFFECTS)


def test_only_backend_side_modules_import_torch_or_onnx():
    offenders = {m: sorted(heavy(imports(m))) for m in MODULES
                 if heavy(imports(m)) and not under(m, MAY_IMPORT_BACKENDS)}
    assert not offenders


def test_the_cli_uses_the_public_api():
    own = {n for n in imports("idapgraph.cli") if n.startswith("idapgraph")}
    assert own and own <= set(CLI_MAY_USE), sorted(own - set(CLI_MAY_USE))


def test_no_import_cycles():
    cycles = import_cycles({m: imports(m) for m in MODULES})
    assert not cycles, cycles


def test_the_cycle_check_finds_an_indirect_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert import_cycles(edges) == [{"a", "b", "c"}]


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long
