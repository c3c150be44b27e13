"""The bad-input catalogue: one row per way a user's data, params or files can be wrong.

Each case breaks a fresh copy of a small project (digits through ingest -> clean -> split, a
model on disk), runs one real stage in-process through `run_stage` (what `dvc repro` runs), and
asserts: exit code 2 (not a traceback), a message naming the file or params key and what to
do, and no output of that stage left behind. Rows a stage can go on without are not errors:
those cases assert the stage finished and set the rows aside with a reason.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.demo_data import write_digits_split
from trainwise.components.models import build_model
from trainwise.components.training.export import save_model
from trainwise.pipelines.stage import run_stage
from tests.conftest import REPO

STAGE_OUTPUTS = {  # what each stage would write: none of it may exist after a failure
    "ingest": ["data/ingest", "metrics/ingest.json"],
    "clean": ["data/clean", "metrics/clean.json"],
    "split": ["data/split", "metrics/split.json"],
    "audit": ["data/audit", "metrics/audit.json"],
    "baseline": ["metrics/baseline.json"],
    "train": ["models/model", "metrics/train.json"],  # models/model pre-exists in the fixture
    "evaluate": ["metrics/evaluate.json"],
}


@dataclass
class Case:
    id: str
    stage: str
    breaks: Callable[[Path], None]
    says: list[str]                      # fragments the message must contain
    keeps: list[str] = field(default_factory=list)  # outputs that existed before and must survive


def _params(root: Path, section: str, **values) -> None:
    p = root / "params.yaml"
    data = yaml.safe_load(p.read_text())
    data.setdefault(section, {}).update(values)
    p.write_text(yaml.safe_dump(data, sort_keys=False))


def _remove(rel: str):
    def f(root: Path):
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return f


def _write(rel: str, content: bytes | str):
    def f(root: Path):
        target = root / rel
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    return f


def _truncate_first_shard(rel_dir: str):
    def f(root: Path):
        shard = sorted((root / rel_dir).glob("*.parquet"))[0]
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    return f


def _model_spec(root: Path, **changes):
    spec_path = root / "models/model/model.json"
    spec = json.loads(spec_path.read_text())
    spec.update(changes)
    spec_path.write_text(json.dumps(spec))


def _weights_replaced(root: Path) -> None:
    """train.pretrained names a local file; the embed stage recorded its sha256; then new weights
    were saved over the same path (DVC sees the same string and re-runs nothing) (issue 27.3)."""
    import hashlib

    _params(root, "train", backbone="efficientnet_lite0", pretrained="weights.safetensors")
    (root / "data/embed").mkdir(parents=True, exist_ok=True)
    (root / "data/embed/manifest.json").write_text(json.dumps({
        "backbone": "efficientnet_lite0", "dim": 1280, "weights": "weights.safetensors",
        "weights_sha256": hashlib.sha256(b"the weights embed read").hexdigest()}))
    (root / "weights.safetensors").write_bytes(b"other weights, same path")


def _one_row_per_class(root: Path) -> None:
    """data/ingest replaced by a table with one row per class: it passed ingest, clean and split,
    then the baselines failed with a scikit-learn traceback (issue 28.7)."""
    from trainwise.components.data.sources import ingest, open_source

    table = root / "one_each.csv"
    table.write_text("a,b,label\n" + "".join(f"{k}.5,{-k},c{k}\n" for k in range(8)))
    shutil.rmtree(root / "data/ingest")
    ingest(open_source("table", path=str(table), label_column="label", max_file_bytes=1 << 20), root / "data/ingest", shard_rows=100,
           shard_bytes=1 << 20, progress=False)


CASES = [
    # -- params.yaml ---------------------------------------------------------------------
    Case("params-unknown-key", "split", lambda r: _params(r, "train", epoch=3), ["train.epoch", "unknown key"]),
    Case("params-wrong-type", "split", lambda r: _params(r, "train", epochs="ten"), ["train.epochs"]),
    Case("params-negative-lr", "split", lambda r: _params(r, "train", lr=-0.1), ["train.lr", "greater than 0"]),
    Case("params-zero-batch", "split", lambda r: _params(r, "train", batch_size=0), ["train.batch_size"]),
    Case("params-fractions-not-1", "split", lambda r: _params(r, "split", train=0.8, val=0.15, test=0.15),
         ["split", "sum to 1"]),
    Case("params-unknown-model", "split", lambda r: _params(r, "train", model="resnet9000"), ["train.model"]),
    Case("params-unknown-source", "ingest", lambda r: _params(r, "ingest", source="imagenet"), ["ingest.source"]),
    Case("params-not-yaml", "split", _write("params.yaml", "train:\n  epochs: [1\n"), ["params.yaml", "not valid YAML"]),
    Case("params-missing", "split", _remove("params.yaml"), ["params.yaml"]),
    Case("params-submit-unknown-stage", "split", lambda r: _params(r, "ray", submit=["ingest"]), ["ray.submit"]),
    Case("params-lr-infinite", "split", lambda r: _params(r, "train", lr=float("inf")), ["train.lr", "finite number"]),
    Case("params-batch-size-bool", "split", lambda r: _params(r, "train", batch_size=True),
         ["train.batch_size", "not true/false"]),
    Case("params-alias-bomb", "split", lambda r: (r / "params.yaml").write_text(
        (r / "params.yaml").read_text() + "bomb0: &b0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" for i in range(1, 10))),
         ["params.yaml", "expand to more than 10000 values"]),
    # -- stage inputs --------------------------------------------------------------------
    Case("one-example-per-class", "clean", lambda r: _one_row_per_class(r),
         ["8 class(es) have fewer than 2 usable rows after clean", "'c0': 1", "needs at least 2"]),
    Case("input-missing", "clean", _remove("data/ingest"), ["data/ingest", "run the stage that writes it"]),
    Case("manifest-not-json", "split", _write("data/clean/manifest.json", "{not json"),
         ["data/clean/manifest.json", "not valid JSON"]),
    Case("audit-split-not-json", "audit", _write("data/split/manifest.json", "{not json"),
         ["data/split/manifest.json", "not valid JSON"]),
    Case("audit-embed-missing", "audit", lambda r: shutil.rmtree(r / "data/embed", ignore_errors=True),
         ["data/embed/manifest.json", "run the stage that writes it"]),
    Case("shard-truncated", "baseline", _truncate_first_shard("data/audit"),  # baseline reads the audited split
         ["data/audit", "unreadable Parquet", "dvc repro --force"]),
    Case("shard-missing", "baseline", lambda r: sorted((r / "data/audit").glob("*.parquet"))[0].unlink(),
         ["data/audit", "shards listed in the manifest are missing"]),
    Case("workers-beyond-cluster", "train", lambda r: _params(r, "train", num_workers=64),
         ["train.num_workers=64", "asks for 64 x {CPU: 1}", "nodes hold at most"]),  # an error, not a hang
    # -- models and checkpoints ------------------------------------------------------------
    Case("model-missing", "evaluate", _remove("models/model"), ["models/model/model.json", "run the train stage"]),
    Case("checkpoint-corrupt", "evaluate", _write("models/model/model.pt", b"\x80\x02garbage"),
         ["models/model/model.pt", "re-run the train stage"]),
    Case("checkpoint-other-shape", "evaluate", lambda r: _model_spec(r, classes=[str(i) for i in range(12)]),
         ["models/model/model.pt", "different runs"]),
    Case("model-spec-not-json", "evaluate", _write("models/model/model.json", "{"),
         ["models/model/model.json", "not valid JSON", "re-run the train stage"]),
    Case("backbone-weights-replaced", "evaluate", _weights_replaced,
         ["weights.safetensors", "changed since the embed stage ran", "data/embed/manifest.json",
          "dvc repro -f embed"]),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """params.yaml + digits through ingest/clean/split + the tune stage's output (tune off) + an
    (untrained) model, laid out as the stages lay them out."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    _params(root, "tune", enabled=False)
    write_digits_split(root / "data")
    manifest = json.loads((root / "data/split/manifest.json").read_text())
    h, w, c = manifest["image_shape"]
    model = build_model("small_cnn", input_shape=(c, h, w), n_classes=len(manifest["classes"]), dropout=0.0)
    save_model(root / "models/model", model.state_dict(),
               {"model": "small_cnn", "input_shape": [c, h, w], "classes": manifest["classes"], "dropout": 0.0})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root.parent / 'catalogue-mlflow.db'}")
        run_stage(importlib.import_module("trainwise.pipelines.tune").main)  # tune.enabled false: writes train's params
    assert (root / "models/tune/best_params.json").exists()
    return root


@pytest.fixture()
def project(pristine, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "p"
    shutil.copytree(pristine, root)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{pristine.parent / 'catalogue-mlflow.db'}")
    return root


def _run(stage: str, capsys) -> tuple[int, str]:
    main = importlib.import_module(f"trainwise.pipelines.{stage}").main
    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_clearly_and_writes_nothing(case: Case, project: Path, capsys):
    before = {rel for rel in STAGE_OUTPUTS[case.stage] if (project / rel).exists()}
    case.breaks(project)
    code, err = _run(case.stage, capsys)
    assert code == 2, err
    assert err.startswith("trainwise: error: ") and "Traceback" not in err
    for fragment in case.says:
        assert fragment in err, f"{fragment!r} not in: {err}"
    for rel in STAGE_OUTPUTS[case.stage]:
        assert (project / rel).exists() == (rel in before), f"{rel} was written or removed by a failed stage"


def test_catalogue_is_big_enough():
    assert len(CASES) >= 18
