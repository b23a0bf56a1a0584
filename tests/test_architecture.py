"""The package layout of DESIGN.md: imports go down the pipeline's layers only, with no cycle.

Every module is parsed (imports inside functions included, and the names a package exports
lazily through ``lazy_exports``), so an import hidden in a function cannot skip a layer.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cbir_kit"
NOTEBOOKS = PACKAGE.parent / "notebooks"

# lower layers first; a module may import its own package and any lower layer, nothing else
LAYERS = [
    {"errors"},                          # ground floor: every error class
    {"_io", "_lazy", "method_specs", "runtime", "cluster"},   # ground floor: atomic writes, lazy exports, specs, runtime, cluster
    {"datasets"},                        # (1) dataset -> image references + ground truth
    {"evaluation"},                      # (6) numbers from rankings: pure numpy, below every stage that ranks
    {"features"},                        # (2) images -> vectors
    {"index"},                           # (3) vectors -> ranked lists
    {"rerank"}, {"threshold"},           # (4), (5)
    {"bench"}, {"pipeline"},             # timings; evaluate() walks the path once
    {"collection"},                      # a gallery indexed once, searched by image or text
    {"train"}, {"grade"},                # side branches
    {"report"},                          # (7)
    {"cli"},                             # the `cbir` command
]
RANK = {top: i for i, layer in enumerate(LAYERS) for top in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    base = importer.split(".")
    if MODULES[importer].name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - level + 1]
    return ".".join(base + ([module] if module else []))


def _existing(name: str) -> str | None:
    """The cbir_kit module ``name`` refers to (a name inside a module resolves to that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(importer: str) -> set[str]:
    """Every cbir_kit module ``importer`` imports, anywhere in its code, or exports lazily."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[importer].read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, node.level, node.module)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            table = node.args[1]
            targets = [_resolve(importer, len(v.value) - len(v.value.lstrip(".")), v.value.lstrip(".") or None)
                       for v in table.values]
        for target in targets:
            target = _existing(target) if target.startswith("cbir_kit") else None
            if target and target != importer:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def test_every_package_and_ground_floor_module_has_a_layer():
    tops = {_top(name) for name in MODULES if name != "cbir_kit"}
    assert tops <= set(RANK), f"modules outside DESIGN.md's layers: {sorted(tops - set(RANK))}"


def test_imports_only_go_down_the_layers():
    upward = [f"{src} imports {dst}" for src, dsts in GRAPH.items() for dst in dsts
              if src != "cbir_kit" and _top(src) != _top(dst) and (dst == "cbir_kit" or RANK[_top(dst)] >= RANK[_top(src)])]
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(sorted(upward))


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}       # 1 = on the current path, 2 = done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions_and_lazy_exports():
    assert "cbir_kit.pipeline.job" in GRAPH["cbir_kit.cli.evaluate"]          # inside run_evaluate()
    assert "cbir_kit.features.checkpoint" in GRAPH["cbir_kit.train"]          # a lazy export
    assert "cbir_kit.features.checkpoint" in GRAPH["cbir_kit.pipeline.job"]   # inside evaluate()


def test_only_the_cli_imports_argparse():
    users = [name for name, path in MODULES.items() if _top(name) != "cli" and any(
        isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in (
            [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module])
        for n in ast.walk(ast.parse(path.read_text())))]
    assert not users, f"argparse outside cbir_kit/cli: {users}"


def test_every_module_names_its_stage_and_notebook_in_its_first_line():
    words = ("Ground floor", "Stage ", "The pipeline", "Side branch", "Instructor side", "The ``cbir", "Collections")
    bad = []
    for name, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.split("\n", 1)[0]
        if not first.startswith(words) or ("notebook" not in first and not name.startswith(("cbir_kit.cli", "cbir_kit.grade", "cbir_kit._", "cbir_kit.errors"))):
            bad.append(f"{name}: {first!r}")
    assert not bad, "first docstring lines that do not name a stage and a notebook:\n" + "\n".join(bad)


def _code_cells():
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "code":
                yield nb.name, i, "".join(cell["source"])


def test_notebooks_import_only_public_names_and_they_exist():
    import importlib

    problems = []
    for nb, i, source in _code_cells():
        try:
            tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cbir_kit"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        problems.append(f"{nb} cell {i}: private name {node.module}.{alias.name}")
                    elif not hasattr(importlib.import_module(node.module), alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            problems.append(f"{nb} cell {i}: {node.module} has no {alias.name}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("argv", [["--help"], ["datasets", "list"]])
def test_the_command_starts_without_torch_or_faiss(argv, tmp_path):
    code = ("import sys, runpy; sys.argv = ['cbir', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('cbir_kit.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'faiss', 'sklearn', 'pytorch_metric_learning') if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "CBIR_DATA": str(tmp_path)})
    assert "HEAVY []" in run.stderr, run.stderr[-2000:]


def test_import_cbir_kit_changes_nothing_in_the_process():
    code = ("import os, sys; before = dict(os.environ); import cbir_kit\n"
            "assert dict(os.environ) == before, 'environment changed'\n"
            "assert not {'torch', 'faiss'} & set(sys.modules), 'torch or faiss loaded'\n"
            "assert callable(cbir_kit.evaluate) and 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_command_starts_where_the_resource_module_does_not_exist():
    code = ("import sys; sys.modules['resource'] = None\n"
            "from cbir_kit.cli.app import build_parser; build_parser().format_help()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_library_function_is_over_60_lines_without_a_reason():
    """A function body over 60 lines (docstring excluded) needs a ``# long: why`` comment just above it."""
    bad = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                length = node.end_lineno - body[0].lineno + 1
                first = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
                above = "\n".join(lines[max(0, first - 3):first])
                if length > 60 and "# long:" not in above:
                    bad.append(f"{name}.{node.name}: {length} lines")
    assert not bad, "functions over 60 lines with no '# long:' reason:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_module():
    crossing = [f"{name}: from {node.module} import {alias.name}"
                for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module != "__future__"
                for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not crossing, "private names imported from another module:\n" + "\n".join(crossing)
