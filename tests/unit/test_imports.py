"""The layers run one way (docs/architecture.md, "Floors"): no import circle among the modules of
components/ and pipelines/, and no module imports one on a higher floor (issue 30.4).

The graph is read from the source with `ast`, not from a running interpreter: every `import` and
`from ... import` anywhere in a module counts, lazy ones in function bodies included (they run as
surely as top-level ones, and a circle that only closes at run time is still a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("components", "pipelines")

# Lowest first. A module may import modules on its own floor or below, never above; the floor of a
# module is that of the longest prefix listed here. Keep in step with docs/architecture.md.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("trainwise.components.stage_exit", "trainwise.components.atomic_io"),   # ground: process lifecycle, atomic writes
    ("trainwise.components.data", "trainwise.components.tracking", "trainwise.components.cluster"),   # the data contract; MLflow and cost; Ray Jobs and placement
    ("trainwise.components.ray_start", "trainwise.components.quality", "trainwise.components.evaluation"),
    ("trainwise.components.models",),
    ("trainwise.components.embedding",),
    ("trainwise.components.training",),
    ("trainwise.components.tuning", "trainwise.components.serving"),
    # components/project (`trainwise init`) writes a project's params.yaml from the schema in
    # pipelines/config.py: a command beside the CLI, not a building block (issue 31 put it there)
    ("trainwise.pipelines", "trainwise.components.project"),
)


def _modules() -> dict[str, Path]:
    mods = {}
    for root in ROOTS:
        for f in sorted((REPO / root).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            # the import names: the folders are trainwise.components / trainwise.pipelines (pyproject package-dir)
            mods[".".join(["trainwise", *(parts[:-1] if parts[-1] == "__init__" else parts)])] = f
    return mods


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module an imported dotted name lives in (`a.b.func` -> `a.b`), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """The project modules ``module`` imports (submodules named in `from pkg import sub` included)."""
    f = MODULES[module]
    pkg = module if f.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
        if isinstance(node, ast.Import):
            out |= {t for a in node.names if (t := _target(a.name))}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                t = f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else _target(base)
                if t:
                    out.add(t)
    out.discard(module)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def floor(module: str) -> int:
    if module in {f"trainwise.{r}" for r in ROOTS}:  # the packages' own __init__ files (empty)
        return 0
    best, level = "", None
    for k, names in enumerate(FLOORS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, k
    if level is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__} and to docs/architecture.md")
    return level


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of 2+ modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checks_see_what_they_check():
    """The graph and the two checks work: a known import is an edge, a planted circle and an
    upward import are found."""
    assert "trainwise.components.data.contract" in GRAPH["trainwise.pipelines.stage"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor("trainwise.components.data.contract") < floor("trainwise.components.training.loop") < floor("trainwise.pipelines.train")


def test_no_import_circle():
    found = cycles(GRAPH)
    assert not found, "import circles (each a set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_import_up_a_floor():
    upward = sorted(f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
                    for m, targets in GRAPH.items() for t in targets if floor(t) > floor(m))
    assert not upward, "imports up a floor:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_floor(module):
    floor(module)


# A stage is glue: params in, components called, outputs written. Past a screen, the logic belongs in
# a component (docs/architecture.md).
MAIN_LINES, FUNCTION_LINES = 60, 80


def long_functions(path: Path, *, limit: int, main_limit: int) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            cap = main_limit if node.name == "main" else limit
            if lines > cap:
                where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                out.append(f"{where}:{node.lineno} {node.name} is {lines} lines (at most {cap})")
    return out


def test_stages_stay_thin(tmp_path):
    long = sorted(x for f in sorted((REPO / "pipelines").glob("*.py"))
                  for x in long_functions(f, limit=FUNCTION_LINES, main_limit=MAIN_LINES))
    assert not long, "functions too long for a stage module (move the logic into a component):\n" + "\n".join(long)
    planted = tmp_path / "stage.py"  # the check sees a 61-line main
    planted.write_text("def main():\n" + "    x = 1\n" * 60)
    assert len(long_functions(planted, limit=FUNCTION_LINES, main_limit=MAIN_LINES)) == 1
