"""The one typed view of params.yaml.

Every stage loads the whole file through :func:`load_params`, so a typo anywhere is caught
before any work starts, and reads only its own section. Unknown keys are errors
(``extra="forbid"``); each field's description says its meaning and range.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Section):
    ingest: str = Field("data/ingest", description="ingest output: Parquet shards + manifest.json")
    clean: str = Field("data/clean", description="clean output")
    split: str = Field("data/split", description="split output (adds the `split` column)")
    tune: str = Field("models/tune", description="best hyperparameters and the trials table")
    model: str = Field("models/model", description="the trained model (weights + model.json)")
    metrics: str = Field("metrics", description="one <stage>.json of DVC metrics per stage")
    plots: str = Field("plots", description="DVC plot data")
    reports: str = Field("reports", description="the HTML report")


class IngestParams(_Section):
    source: Literal["digits"] = Field(
        "digits", description="where rows come from; `digits` ships with scikit-learn"
    )
    path: str | None = Field(None, description="folder, file, archive or URL for file sources")
    shard_rows: int = Field(50_000, gt=0, description="rows per Parquet shard")


class CleanParams(_Section):
    image_size: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = Field(
        (8, 8), description="(height, width) every image is decoded and resized to"
    )
    channels: Literal[1, 3] = Field(1, description="1: grayscale, 3: RGB; every image is converted")
    drop_duplicates: bool = Field(True, description="set aside exact duplicates (content hash)")


class SplitParams(_Section):
    train: float = Field(0.7, gt=0, lt=1, description="fraction of rows for training")
    val: float = Field(0.15, gt=0, lt=1, description="fraction for validation (early stopping, tuning)")
    test: float = Field(0.15, gt=0, lt=1, description="fraction held out for evaluate")
    seed: int = Field(0, description="salt of the id hash that assigns rows to splits")

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitParams":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


BaselineModel = Literal["majority", "logistic_regression", "decision_tree"]


class BaselineParams(_Section):
    models: list[BaselineModel] = Field(
        ["majority", "logistic_regression", "decision_tree"], min_length=1,
        description="classical models trained on the same split as the network",
    )
    seed: int = Field(0, description="random_state of the scikit-learn models")


class Distribution(_Section):
    type: Literal["loguniform", "uniform", "choice", "randint"]
    low: float | None = None
    high: float | None = None
    values: list | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "Distribution":
        if self.type == "choice":
            if not self.values:
                raise ValueError("`choice` needs a non-empty `values` list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"`{self.type}` needs low < high, got low={self.low} high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"`loguniform` needs low > 0, got {self.low}")
        return self


TUNABLE = ("lr", "weight_decay", "dropout", "batch_size")


class TuneParams(_Section):
    enabled: bool = Field(True, description="false: skip the sweep, train uses train.* as given")
    num_samples: int = Field(8, gt=0, description="trials to run")
    max_concurrent_trials: int = Field(2, gt=0, description="trials running at once")
    workers_per_trial: int = Field(1, gt=0, description="Ray Train workers (DDP ranks) per trial")
    max_epochs: int = Field(10, gt=0, description="epochs a trial may reach (ASHA max_t)")
    grace_period: int = Field(2, gt=0, description="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor per rung")
    metric: Literal["val/loss", "val/acc"] = Field("val/loss", description="what ASHA and the pick optimise")
    seed: int = Field(0, description="seed of the search algorithm")
    search_space: dict[str, Distribution] = Field(
        default_factory=dict, description=f"train hyperparameters to sample; keys from {TUNABLE}"
    )

    @model_validator(mode="after")
    def _check(self) -> "TuneParams":
        unknown = sorted(set(self.search_space) - set(TUNABLE))
        if unknown:
            raise ValueError(f"search_space keys {unknown} are not tunable; choose from {list(TUNABLE)}")
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) > max_epochs ({self.max_epochs})")
        return self

    @property
    def mode(self) -> str:
        return "min" if self.metric.endswith("loss") else "max"


class TrainParams(_Section):
    model: Literal["small_cnn", "cnn", "mlp", "gru", "transformer"] = Field(
        "small_cnn", description="network from components.models: images small_cnn / cnn (ResNet-style) / mlp; "
                                 "sequences cnn / gru / transformer / mlp; text gru / transformer / mlp; features mlp")
    epochs: int = Field(15, gt=0, description="maximum epochs")
    batch_size: int = Field(64, gt=0, description="global batch size, split across workers")
    lr: float = Field(3e-3, gt=0, description="(peak) learning rate (overridden by tune when enabled)")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay (overridden by tune)")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout before the classifier (overridden by tune)")
    patience: int = Field(5, gt=0, description="stop after this many epochs without a better val/loss")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd with Nesterov momentum")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    lr_schedule: Literal["constant", "cosine", "one_cycle"] = Field(
        "constant", description="per optimiser step over `epochs`: constant, cosine (to 0), one_cycle (warm-up, anneal)")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this; null: off")
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches per optimiser step (effective batch x this)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing of the training loss")
    augment: float = Field(0.0, ge=0, le=1, description="augmentation strength 0..1 (images: shifts; sequences/"
                                                       "features: noise; text: word dropout)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16: autocast on CPU or GPU; fp16: GPU only, with a grad scaler")
    loader: Literal["memory", "ray_data"] = Field(
        "memory", description="memory: split read once, decoded once per worker; ray_data: Ray Data shards "
                              "streamed per epoch (see benchmarks/train_throughput.py)")
    max_tokens: int = Field(64, gt=0, description="text: tokens kept per example")
    vocab_size: int = Field(20_000, ge=3, description="text: largest vocabulary, fitted on the train split")
    num_workers: int = Field(2, gt=0, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="GPUs for the workers; NCCL instead of gloo")
    cpus_per_worker: int = Field(1, gt=0, description="CPUs reserved per worker; also torch threads")
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker when use_gpu (a fraction shares one)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers: PACK on few nodes, SPREAD across nodes")
    max_failures: int = Field(1, ge=0, description="worker failures survived by resuming from the last checkpoint")
    checkpoints_to_keep: int = Field(2, gt=0, description="best-k checkpoints kept, by val/loss")
    collective_timeout_s: int = Field(120, gt=0, description="a DDP collective waiting longer fails (dead peer)")
    resume: bool = Field(True, description="re-running with the same params and data continues the same run "
                                           "from its latest checkpoint; false: always start afresh")
    seed: int = Field(0, description="torch / sampler / augmentation seed")

    @model_validator(mode="after")
    def _precision(self) -> "TrainParams":
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs use_gpu: true; on CPU use bf16")
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(512, gt=0, description="inference batch size")


class ReportParams(_Section):
    title: str = Field("trainwise report", description="heading of the HTML report")


class MlflowParams(_Section):
    tracking_uri: str | None = Field(
        None, description="MLFLOW_TRACKING_URI overrides; default sqlite:///mlflow.db in the repo"
    )
    experiment: str = Field("trainwise", description="one experiment per project")
    registered_model: str = Field("trainwise-model", description="registry name of the trained model")


class RayParams(_Section):
    address: str | None = Field(None, description="cluster to join; RAY_ADDRESS overrides; null: start Ray in-process")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the in-process Ray (null: all)")
    storage_path: str = Field(".trainwise/ray", description="checkpoints and Tune state; shared storage on a cluster")
    verbose: bool = Field(False, description="show Ray's own logs (TRAINWISE_RAY_VERBOSE=1 too)")
    train_poll_s: float = Field(
        0.25, gt=0, le=10,
        description="how often Ray Train's controller collects reports; Ray's 2 s default makes every "
                    "epoch wait up to 2 s for it (see benchmarks/report_poll.py)")


class CostParams(_Section):
    cpu_hour_usd: float = Field(0.048, ge=0, description="price of one reserved CPU core for an hour")
    gpu_hour_usd: float = Field(2.50, ge=0, description="price of one reserved GPU for an hour")


class Params(_Section):
    paths: Paths = Paths()
    ingest: IngestParams = IngestParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    baseline: BaselineParams = BaselineParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    mlflow: MlflowParams = MlflowParams()
    ray: RayParams = RayParams()
    cost: CostParams = CostParams()


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (typo? see the commented params.yaml for valid keys)")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(data: dict, *, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise :class:`ConfigError` naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run trainwise from the project root") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data, source=str(path))
