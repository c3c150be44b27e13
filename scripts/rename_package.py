"""Move trainwise's import names under one package: `components.x` -> `trainwise.components.x`,
`pipelines.x` -> `trainwise.pipelines.x` (issue 31: an install must not claim the generic
top-level names `components` and `pipelines` in site-packages). The folders stay where they are:
pyproject.toml maps `trainwise.components` / `trainwise.pipelines` onto them (package-dir),
setup.py lists their sub-packages, trainwise/__init__.py finds them in a bare checkout.

    python scripts/rename_package.py           # rewrite, print every change (re-runnable: a second run changes nothing)
    python scripts/rename_package.py --check   # exit 1 if anything old is left (imports, module strings, pyproject)

What is rewritten, in every tracked or new (not ignored) text file of the repository:
- `from components... import` / `import components...` / `from pipelines...` / `import pipelines...`
- dotted module names anywhere else: `python -m pipelines.train`, `mock.patch("components.x.y")`,
  `f"pipelines.{stage}"`, docstrings and docs (`components.training.loop.run_loop`)
- pyproject.toml: the console script, package-dir instead of packages.find, the version read from
  trainwise.__version__ (one place)
- dvc.yaml: trainwise/__init__.py joins every stage's deps (every stage imports it)
- pipelines/stage.py: the stage name from its module name, whatever the package prefix
Paths (`components/data`, `pipelines/train.py`) are not module names and are left alone.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipelines")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".ini", ".txt", ".rst", ".j2", ".html"}
SKIP = {"scripts/rename_package.py"}

# `from components.x import y`, `import pipelines.stage`, `from pipelines import cli` (also inside strings of code)
IMPORT = re.compile(r"(?m)^(?P<lead>[ \t\"']*(?:from|import)[ \t]+)(?P<pkg>components|pipelines)\b(?=[ \t.\n;,\"'\\])")
# a dotted module name: not part of a longer name or path (`trainwise.components`, `docs/components.md`)
DOTTED = re.compile(r"(?<![\w./\\-])(?P<pkg>components|pipelines)\.(?=[A-Za-z_{])")
# forms this cannot rewrite safely by pattern: reported by --check for a person to look at
SUSPECT = re.compile(r"""["'](?:components|pipelines)\.["']""")

STAGE_NAME_OLD = 'return name.split(".", 1)[1] if name.startswith("pipelines.") else None'
STAGE_NAME_NEW = 'return name.rpartition(".")[2] if name.rpartition(".")[0].split(".")[-1] == "pipelines" else None'
# module-name prefixes tested as strings: file -> [(old, new)] (SUSPECT finds new ones for --check)
KNOWN = {
    "pipelines/stage.py": [(STAGE_NAME_OLD, STAGE_NAME_NEW)],
    "benchmarks/text_pipeline.py": [('if mod.startswith(b"pipelines."):\n            return mod.decode().split(".", 1)[1]',
                                     'if mod.startswith(b"trainwise.pipelines."):\n            return mod.decode().rpartition(".")[2]')],
    "benchmarks/photo_rows.py": [('c.decode().split(".")[1] for c in _cmd if c.startswith(b"pipelines.")',
                                  'c.decode().rpartition(".")[2] for c in _cmd if c.startswith(b"trainwise.pipelines.")')],
}

PYPROJECT_FIND = re.compile(r'(?ms)^\[tool\.setuptools\.packages\.find\]\ninclude = \[[^\]]*\]\n')
PYPROJECT_DIR = ('[tool.setuptools]\n'
                 '# one import package: the repository\'s folders are trainwise.components / trainwise.pipelines in a\n'
                 '# wheel (setup.py lists their sub-packages); nothing else is claimed in site-packages\n'
                 'package-dir = {"trainwise" = "trainwise", "trainwise.components" = "components", '
                 '"trainwise.pipelines" = "pipelines"}\n\n'
                 '[tool.setuptools.dynamic]\n'
                 'version = {attr = "trainwise.__version__"}\n')
VERSION_LINE = re.compile(r'(?m)^version = "[^"]+"\n')
DVC_DEP = re.compile(r"(?m)^(?P<indent>[ \t]+)- pipelines/stage\.py\n(?!(?P=indent)- trainwise/__init__\.py\n)")


def files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    keep = []
    for rel in out:
        p = REPO / rel
        if rel in SKIP or not p.is_file() or p.is_symlink():
            continue
        if p.suffix in SUFFIXES or p.name.startswith("Dockerfile") or p.name in ("Makefile", "MANIFEST.in"):
            keep.append(p)
    return keep


def rewrite(text: str, rel: str) -> str:
    new = IMPORT.sub(lambda m: f"{m['lead']}trainwise.{m['pkg']}", text)
    new = DOTTED.sub(lambda m: f"trainwise.{m['pkg']}.", new)
    for before, after in KNOWN.get(rel, []):
        new = new.replace(before, after)
    if rel == "pyproject.toml":
        new = PYPROJECT_FIND.sub(PYPROJECT_DIR, new)
        if "[tool.setuptools.dynamic]" in new and VERSION_LINE.search(new):
            new = VERSION_LINE.sub('dynamic = ["version"]  # trainwise/__init__.py __version__\n', new, count=1)
    if rel == "dvc.yaml":
        new = DVC_DEP.sub(lambda m: f"{m[0]}{m['indent']}- trainwise/__init__.py\n", new)
    return new


def leftovers(text: str, rel: str) -> list[str]:
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if IMPORT.search(line + "\n") or DOTTED.search(line) or SUSPECT.search(line):
            found.append(f"{rel}:{n}: {line.strip()[:160]}")
    if rel == "pyproject.toml" and ('"trainwise.components"' not in text or "packages.find" in text):
        found.append("pyproject.toml: no package-dir mapping of trainwise.components / trainwise.pipelines")
    found += [f"{rel}: still expects the old prefix: {before.splitlines()[0].strip()}"
              for before, _ in KNOWN.get(rel, []) if before in text]
    if rel == "dvc.yaml" and DVC_DEP.search(text):
        found.append("dvc.yaml: a stage without trainwise/__init__.py in its deps")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything old is left")
    args = ap.parse_args(argv)
    if not (REPO / "trainwise" / "__init__.py").is_file():
        print("trainwise/__init__.py is missing: the package the names move into", file=sys.stderr)
        return 1
    changed, left = 0, []
    for p in files():
        rel = p.relative_to(REPO).as_posix()
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if args.check:
            left += leftovers(text, rel)
            continue
        new = rewrite(text, rel)
        left += leftovers(new, rel)
        if new != text:
            old_lines, new_lines = text.splitlines(), new.splitlines()
            n = sum(a != b for a, b in zip(old_lines, new_lines)) + abs(len(old_lines) - len(new_lines))
            print(f"{rel}: {n} line(s)")
            p.write_text(new, encoding="utf-8")
            changed += 1
    if args.check:
        for line in left:
            print(line)
        print(f"{len(left)} old name(s) left" if left else "nothing old left: every import is trainwise.*")
        return 1 if left else 0
    print(f"{changed} file(s) changed")
    for line in left:
        print(f"left for a person to look at: {line}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
