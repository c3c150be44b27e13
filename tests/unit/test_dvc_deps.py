"""DVC knows every input of every stage: each stage's Python import closure inside the project is
covered by that stage's `deps` in dvc.yaml (issue 14.5).

A module a stage imports but does not depend on is a silent staleness bug: edit it, and `dvc
status` still says the stage's outputs are up to date. The closure is read from the source, not
from a running interpreter: every `import` / `from ... import` anywhere in a module (function
bodies too: lazy imports run as surely as top-level ones), and `importlib.import_module` with a
constant name, followed through project modules transitively. Packages' `__init__.py` files
count when they hold more than a docstring (importing a submodule runs them).

Generic over dvc.yaml: every stage whose `cmd` runs a project module (`python -m pkg.mod` or
`python path/to/file.py`) is checked, so a stage added later is checked without touching this.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Top-level packages of the project; third-party imports (torch, ray...) are the venv's business.
PACKAGES = sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name not in ("tests",))


def _resolve(text: str, params: dict) -> str:
    """`${paths.split}` -> data/split, as DVC templating does from params.yaml."""
    def lookup(m):
        v = params
        for part in m.group(1).strip().split("."):
            if not isinstance(v, dict) or part not in v:
                return m.group(0)
            v = v[part]
        return str(v)
    return re.sub(r"\$\{([^}]+)\}", lookup, text)


# pyproject.toml's package-dir: `trainwise.components` is the components/ folder (issue 31)
MAPPED = ("components", "pipelines")


def _module_base(module: str) -> Path:
    """`trainwise.components.tracking.cost` (or `trainwise.components.tracking.cost`) -> REPO/components/tracking/cost."""
    parts = module.split(".")
    if parts[0] == "trainwise" and len(parts) > 1 and parts[1] in MAPPED:
        parts = parts[1:]
    return REPO.joinpath(*parts)


def module_file(module: str) -> Path | None:
    """The file of a project module (`trainwise.components.tracking.cost`), or None if not one of ours."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = _module_base(module)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _is_package(module: str) -> bool:
    return (_module_base(module) / "__init__.py").is_file()


def _only_docstring(f: Path) -> bool:
    body = ast.parse(f.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _own_package(f: Path) -> str:
    """The package relative imports in ``f`` start from (a/b/c.py -> a.b; a/b/__init__.py -> a.b)."""
    return ".".join(f.relative_to(REPO).with_suffix("").parts[:-1])


def imported_modules(f: Path) -> set[str]:
    """Project modules ``f`` imports anywhere in its body (dotted names, parents included)."""
    found: set[str] = set()
    pkg = _own_package(f)

    def add(name: str) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # `import a.b.c` runs a/__init__, a/b/__init__ too
            found.add(".".join(parts[:i]))

    for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its own package upwards
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            add(mod)
            for a in node.names:  # `from pkg import submodule`
                if _is_package(mod) and module_file(f"{mod}.{a.name}") is not None:
                    add(f"{mod}.{a.name}")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) in
                   ("import_module", "__import__"))):
            add(node.args[0].value)
    return {m for m in found if module_file(m) is not None}


@lru_cache(maxsize=None)
def import_closure(start: Path) -> frozenset[str]:
    """Repo-relative paths of every project file that running ``start`` may import."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(module_file(m) for m in imported_modules(f))
    return frozenset(str(f.relative_to(REPO)) for f in seen
                     if not (f.name == "__init__.py" and _only_docstring(f)))


def stage_entry(cmd: str) -> Path | None:
    """The project file a stage's `cmd` runs: `python -m trainwise.pipelines.train`, `trainwise stage train` or
    `python pipelines/x.py`."""
    m = re.search(r"\bpython[0-9.]*\s+-m\s+([\w.]+)", cmd)
    if m:
        return module_file(m.group(1))
    m = re.search(r"\btrainwise\s+stage\s+(\w+)", cmd)  # the CLI runs pipelines.<name>
    if m:
        return module_file(f"trainwise.pipelines.{m.group(1)}")
    m = re.search(r"\bpython[0-9.]*\s+(\S+\.py)\b", cmd)
    return REPO / m.group(1) if m and (REPO / m.group(1)).is_file() else None


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _stages() -> dict[str, dict]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        cmd = " && ".join(st["cmd"]) if isinstance(st["cmd"], list) else st["cmd"]
        deps = [str(Path(_resolve(str(d), params))).replace("\\", "/") for d in st.get("deps") or []]
        out[name] = {"cmd": cmd, "deps": [d[2:] if d.startswith("./") else d for d in deps]}
    return out


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_module_a_stage_imports_is_one_of_its_dvc_deps(name):
    st = STAGES[name]
    entry = stage_entry(st["cmd"])
    assert entry is not None, (f"dvc.yaml: stage {name}: cannot tell which project module `{st['cmd']}` runs; "
                               "use `python -m pipelines.<stage>`")
    missing = sorted(f for f in import_closure(entry) if not covered(f, st["deps"]))
    assert not missing, (f"dvc.yaml: stage {name} imports files its deps do not cover, so editing them leaves "
                         f"its outputs marked up to date. Add to its deps (or a folder above): {missing}")


def test_the_closure_follows_lazy_imports_and_submodules():
    """The checker itself: what it must see for the test above to mean anything."""
    report = import_closure(REPO / "pipelines" / "report.py")
    assert "pipelines/stage.py" in report and "components/evaluation/summary.py" in report
    assert "pipelines/remote.py" in report  # imported inside run_stage(), not at the top
    assert "components/evaluation/figures.py" in import_closure(REPO / "pipelines" / "evaluate.py")  # from pkg import mod
    assert "components/__init__.py" not in report  # a docstring-only package file
    assert not covered("components/evaluation/summary.py", ["components/evaluation/report.py", "components/eval"])
    assert covered("components/evaluation/summary.py", ["components/evaluation"])
    assert stage_entry("python -m trainwise.pipelines.train") == REPO / "pipelines" / "train.py"
    assert stage_entry("trainwise stage train") == REPO / "pipelines" / "train.py"
