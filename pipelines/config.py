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
from pydantic import ValidationInfo, field_validator

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


DistributionType = Literal["loguniform", "uniform", "quniform", "randint", "choice"]


class Distribution(_Section):
    """One search-space entry. Each field's error names its own key (``tune.search_space.lr.low``)."""

    type: DistributionType = Field(description="loguniform / uniform / quniform: low, high (quniform: q); "
                                               "randint: integers low <= x < high; choice: values")
    low: float | None = Field(None, validate_default=True, description="lower bound")
    high: float | None = Field(None, validate_default=True, description="upper bound (exclusive for randint)")
    q: float | None = Field(None, validate_default=True, description="quniform: step (x = round(x / q) * q)")
    values: list | None = Field(None, validate_default=True, description="choice: the candidates")

    @field_validator("low")
    @classmethod
    def _low(cls, v, info: ValidationInfo):
        kind = info.data.get("type")
        if kind in (None, "choice"):
            return v
        if v is None:
            raise ValueError(f"`{kind}` needs `low`")
        if kind == "loguniform" and v <= 0:
            raise ValueError(f"`loguniform` needs low > 0, got {v}")
        if kind == "randint" and v != int(v):
            raise ValueError(f"`randint` needs an integer low, got {v}")
        return v

    @field_validator("high")
    @classmethod
    def _high(cls, v, info: ValidationInfo):
        kind, low = info.data.get("type"), info.data.get("low")
        if kind in (None, "choice"):
            return v
        if v is None:
            raise ValueError(f"`{kind}` needs `high`")
        if low is not None and not low < v:
            raise ValueError(f"`{kind}` needs low < high, got low={low} high={v}")
        if kind == "randint" and v != int(v):
            raise ValueError(f"`randint` needs an integer high, got {v}")
        return v

    @field_validator("q")
    @classmethod
    def _q(cls, v, info: ValidationInfo):
        kind = info.data.get("type")
        if kind == "quniform" and (v is None or v <= 0):
            raise ValueError(f"`quniform` needs a step q > 0, got {v}")
        if kind not in (None, "quniform") and v is not None:
            raise ValueError(f"`q` only applies to `quniform`, not `{kind}`")
        return v

    @field_validator("values")
    @classmethod
    def _values(cls, v, info: ValidationInfo):
        kind = info.data.get("type")
        if kind == "choice" and not v:
            raise ValueError("`choice` needs a non-empty `values` list")
        if kind not in (None, "choice") and v is not None:
            raise ValueError(f"`values` only applies to `choice`, not `{kind}`")
        return v

    def extremes(self) -> list:
        """The values a sample can take at its edges (all of them for `choice`): checked against
        the train param's own bounds so a bad range fails at load, not inside a trial."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


# Train params a sweep cannot sample: it sets them itself (epochs: tune.max_epochs; patience:
# trials run until the scheduler stops them) or they are resources, not hyperparameters.
NOT_TUNABLE = ("epochs", "patience", "num_workers", "use_gpu", "cpus_per_worker", "max_failures",
               "checkpoints_to_keep", "seed")


class TuneParams(_Section):
    enabled: bool = Field(True, description="false: skip the sweep, train uses train.* as given")
    num_samples: int = Field(8, gt=0, description="trials to run")
    max_concurrent_trials: int = Field(2, gt=0, description="trials running at once")
    workers_per_trial: int = Field(1, gt=0, description="Ray Train workers (DDP ranks) per trial")
    cpus_per_worker: int | None = Field(None, gt=0, description="CPUs per trial worker (null: train.cpus_per_worker)")
    use_gpu: bool = Field(False, description="one GPU per trial worker")
    search_alg: Literal["random", "optuna"] = Field(
        "random", description="random: independent samples; optuna: TPE (Optuna), learning from finished trials")
    optuna_startup_trials: int = Field(
        4, gt=0, description="optuna: random trials before TPE starts modelling (Optuna's default is 10)")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha: stop weak trials at rungs; fifo: every trial runs max_epochs")
    max_epochs: int = Field(10, gt=0, description="epochs a trial may reach (ASHA max_t)")
    grace_period: int = Field(2, gt=0, description="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor per rung")
    metric: Literal["val/loss", "val/acc"] = Field("val/loss", description="what ASHA and the pick optimise")
    seed: int = Field(0, description="seed of the search algorithm")
    budget_usd: float | None = Field(
        None, gt=0, description="stop at this spend (trial wall x resources x cost.* rates): no new trial "
                                "starts, running ones end at their next epoch; null: no limit")
    time_budget_s: float | None = Field(
        None, gt=0, description="the same, on the sweep's wall time (summed over resumed runs); null: no limit")
    patience: int = Field(
        2, gt=0, description="overfit report: a trial whose val/loss stayed above its best for its last "
                             "`patience` epochs while train/loss kept falling is marked overfit")
    resume: bool = Field(True, description="an interrupted sweep with the same params and data resumes "
                                           "(finished trials are kept); false: always start afresh")
    search_space: dict[str, Distribution] = Field(
        default_factory=dict, description="train params to sample (any train.* key but those set by the "
                                          f"sweep: {', '.join(NOT_TUNABLE)})")

    @field_validator("search_space")
    @classmethod
    def _tunable(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        tunable = [k for k in TrainParams.model_fields if k not in NOT_TUNABLE]
        for key, dist in space.items():
            if key not in tunable:
                raise ValueError(f"tune.search_space.{key}: not a tunable train param; choose from {tunable}")
            for value in dist.extremes():
                try:
                    TrainParams.model_validate({key: value})
                except ValidationError as err:
                    raise ValueError(f"tune.search_space.{key}: {value!r} is not a valid train.{key}: "
                                     f"{err.errors()[0]['msg']}") from None
        return space

    @model_validator(mode="after")
    def _check(self) -> "TuneParams":
        if self.scheduler == "asha" and self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) > max_epochs ({self.max_epochs})")
        return self

    @property
    def mode(self) -> str:
        return "min" if self.metric.endswith("loss") else "max"


class TrainParams(_Section):
    model: Literal["small_cnn", "mlp"] = Field("small_cnn", description="network from components.models")
    epochs: int = Field(15, gt=0, description="maximum epochs")
    batch_size: int = Field(64, gt=0, description="global batch size, split across workers")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate (overridden by tune when enabled)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay (overridden by tune)")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout before the classifier (overridden by tune)")
    patience: int = Field(5, gt=0, description="stop after this many epochs without a better val/loss")
    num_workers: int = Field(2, gt=0, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker; NCCL instead of gloo")
    cpus_per_worker: int = Field(1, gt=0, description="CPUs reserved per worker; also torch threads")
    max_failures: int = Field(1, ge=0, description="worker failures survived by resuming from the last checkpoint")
    checkpoints_to_keep: int = Field(2, gt=0, description="best-k checkpoints kept, by val/loss")
    seed: int = Field(0, description="torch / sampler seed")


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
