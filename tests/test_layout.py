"""The package layout is the pipeline: each stage imports only the stages below it.

Reads every module's imports with ``ast`` (function-local and ``TYPE_CHECKING`` imports
included: an upward import hidden in a function is still an upward dependency) and fails on
an import that points up the stack, or on any circle of imports between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import batchgen

PACKAGE = Path(batchgen.__file__).parent

# Bottom to top. A module may import its own stage and the stages listed before it.
STAGES: tuple[tuple[str, ...], ...] = (
    ("errors", "_version", "retry"),  # retry: what a failure means, the one retry policy
    ("planning",),
    ("manifest",),
    ("journal",),
    ("outputs",),
    ("fal",),
    ("emulator",),
    ("running", "config", "options", "option_rules"),  # RunOptions, Settings: what a run is told
    ("billing",),  # reconcile: the folder's journal beside fal's billing events
    ("api",),
    ("commands", "cli", "__main__", "__init__"),
)
LEVEL = {name: i for i, names in enumerate(STAGES) for name in names}
MAX_LINES = 400


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported batchgen module, line) for every import in the module's source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "batchgen":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "batchgen":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from batchgen.x import y` is an import of module x.y when y is a module.
                yield (sub if sub in known else target), node.lineno


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph(known: Mapping[str, Path]) -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports(name, path, known) if target != name}
        for name, path in known.items()
    }


def upward_imports(known: Mapping[str, Path]) -> list[str]:
    bad = []
    for name, path in known.items():
        here = stage(name)
        for target, line in sorted(set(imports(name, path, known))):
            there = stage(target)
            if there not in LEVEL:
                bad.append(f"{path.name}:{line}: {target} is in no stage (add it to STAGES)")
            elif LEVEL[there] > LEVEL[here]:
                bad.append(f"{name}:{line} imports {target}: {here} may not use {there}")
    return bad


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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


def test_every_stage_imports_only_the_stages_below_it() -> None:
    assert upward_imports(modules()) == []


def test_no_module_imports_itself_back_through_others() -> None:
    assert cycles(graph(modules())) == []


def test_every_top_level_name_belongs_to_a_stage() -> None:
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    names = {n for n in names if not n.startswith(".") and n != "__pycache__" and n != "py.typed"}
    assert names <= set(LEVEL)


def test_no_module_is_longer_than_the_style_allows() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


# The checks above must be able to fail: each is run on a small package with the fault in it.


def _package(tmp: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp / "batchgen" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return modules(tmp / "batchgen")


@pytest.mark.parametrize(
    "source",
    [
        "from batchgen.running.runner import execute\n",
        "import batchgen.running.runner\n",
        "from batchgen.running import runner\n",
        "def f():\n    from batchgen.api import plan\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from batchgen.config import S\n",
        "from ..running import runner\n",
    ],
)
def test_an_upward_import_is_caught_however_it_is_written(tmp_path: Path, source: str) -> None:
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "journal/__init__.py": "",
            "journal/writer.py": source,
            "running/__init__.py": "",
            "running/runner.py": "",
        },
    )
    (problem,) = upward_imports(known)
    assert problem.startswith("batchgen.journal.writer:") and "journal may not use" in problem


def test_a_downward_import_passes(tmp_path: Path) -> None:
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "planning/__init__.py": "",
            "planning/jobs.py": "",
            "journal/__init__.py": "",
            "journal/writer.py": "from batchgen.planning.jobs import JobSpec\nfrom . import x\n",
            "journal/x.py": "",
        },
    )
    assert upward_imports(known) == []


def test_a_circle_inside_a_stage_is_caught(tmp_path: Path) -> None:
    known = _package(
        tmp_path,
        {
            "__init__.py": "",
            "manifest/__init__.py": "",
            "manifest/fields.py": "from batchgen.manifest.files import LocalFiles\n",
            "manifest/files.py": "from batchgen.manifest import fields\n",
        },
    )
    assert cycles(graph(known)) == [["batchgen.manifest.fields", "batchgen.manifest.files"]]


def test_the_public_functions_survive_their_stage_packages() -> None:
    """``batchgen.plan`` and ``batchgen.run`` are functions of the public API; a subpackage of
    the same name would replace them on the package once imported (hence ``planning`` and
    ``running``)."""
    import batchgen.planning.summary
    import batchgen.running.runner

    assert callable(batchgen.plan) and batchgen.plan.__module__ == "batchgen.api"
    assert callable(batchgen.run) and batchgen.run.__module__ == "batchgen.api"
