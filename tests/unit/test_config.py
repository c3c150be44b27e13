import pytest
import yaml

from trainwise.pipelines.config import ConfigError, Params, load_params, parse_params
from tests.conftest import REPO


def test_repo_params_file_is_valid_and_matches_the_demo():
    p = load_params(REPO / "params.yaml")
    assert p.ingest.source == "digits"
    assert p.train.num_workers == 2 and not p.train.use_gpu
    assert p.tune.enabled and p.tune.num_samples >= 8
    assert set(p.tune.search_space) >= {"lr", "weight_decay", "dropout"}


def test_every_section_in_the_repo_file_is_known_to_the_model():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)


@pytest.mark.parametrize("data, key", [
    ({"train": {"epoch": 3}}, "train.epoch"),                         # typo: unknown key
    ({"trian": {}}, "trian"),                                          # unknown section
    ({"train": {"lr": -0.1}}, "train.lr"),                            # negative learning rate
    ({"train": {"num_workers": "two"}}, "train.num_workers"),         # wrong type
    ({"train": {"model": "resnet9000"}}, "train.model"),              # unknown model
    ({"split": {"train": 0.8, "val": 0.15, "test": 0.15}}, "split"),  # fractions do not sum to 1
    ({"tune": {"search_space": {"momentum": {"type": "uniform", "low": 0, "high": 1}}}}, "tune"),
    ({"tune": {"search_space": {"lr": {"type": "loguniform", "low": 0, "high": 1}}}}, "tune.search_space.lr"),
    ({"tune": {"grace_period": 20, "max_epochs": 5}}, "tune"),
    ({"ingest": {"source": "ftp"}}, "ingest.source"),
])
def test_bad_values_are_rejected_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_params(data, source="params.yaml")
    msg = str(err.value)
    assert msg.startswith("params.yaml is invalid")
    assert f"  {key}" in msg


def test_unknown_key_message_says_it_is_unknown():
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key"):
        parse_params({"train": {"epoch": 3}})


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_params(bad)


# Keys that describe one dataset: the schema's default and the shipped params.yaml (the digits demo)
# may differ there, as a project sets them for its own data. Every other key has one default, the
# same in params.yaml and the schema (issue 27: tune.max_epochs was 10 in one and 8 in the other).
DATA_SPECIFIC = {"ingest.source", "ingest.path", "ingest.label_column", "ingest.text_column"}


def _schema_vs_file(model, raw: dict, prefix: str = ""):
    """(key, schema default, params.yaml value) for each key where they differ, keys missing from the
    file included (a default nobody sees in params.yaml is a second place for it)."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            yield key, "(schema only)", "(missing from params.yaml)"
            continue
        value, ann = raw[name], field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
            yield from _schema_vs_file(ann, value, key + ".")
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, dict):
            default = {k: v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
                       for k, v in default.items()}
        elif isinstance(default, tuple):
            default = list(default)
        if default != value and key not in DATA_SPECIFIC:
            yield key, default, value


def test_every_schema_default_is_params_yamls_value():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert list(_schema_vs_file(Params, raw)) == []
    assert DATA_SPECIFIC <= {f"ingest.{k}" for k in raw["ingest"]}  # the exceptions name real keys


def test_the_registered_model_is_named_after_the_data_unless_named():
    assert load_params(REPO / "params.yaml").mlflow.registered_model == "trainwise-digits"
    assert parse_params({"ingest": {"source": "table", "path": "s3://bucket/sms.csv"}}).mlflow.registered_model \
        == "trainwise-sms"
    assert parse_params({"ingest": {"source": "image_folder", "path": "data/raw/Oxford Pets.tar.gz"}}) \
        .mlflow.registered_model == "trainwise-oxford-pets"
    assert parse_params({"ingest": {"source": "image_folder"}}).mlflow.registered_model == "trainwise-image-folder"
    named = {"ingest": {"source": "table", "path": "x.csv"}, "mlflow": {"registered_model": "flowers"}}
    assert parse_params(named).mlflow.registered_model == "flowers"


# -- numbers that YAML reads as something else (issue 28.10) --------------------------------------

@pytest.mark.parametrize("text, key, says", [
    ("train:\n  lr: .inf\n", "train.lr", "finite number"),
    ("train:\n  dropout: .nan\n", "train.dropout", "finite number"),
    ("tune:\n  budget_usd: .inf\n", "tune.budget_usd", "finite number"),
    ("train:\n  batch_size: true\n", "train.batch_size", "not true/false"),
    ("train:\n  epochs: yes\n", "train.epochs", "not true/false"),
    ("clean:\n  image_size: [true, 8]\n", "clean.image_size", "not true/false"),
    ("cost:\n  gpu_hour_usd_by_type: {H100: true}\n", "cost.gpu_hour_usd_by_type", "not true/false"),
    ("tune:\n  search_space:\n    lr: {type: uniform, low: false, high: 0.1}\n", "tune.search_space.lr.low",
     "not true/false"),
])
def test_non_finite_numbers_and_bools_for_numbers_are_refused(tmp_path, text, key, says):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(tmp_path / "params.yaml")
    assert key in str(err.value) and says in str(err.value)


def test_bools_stay_valid_where_a_bool_is_meant():
    p = parse_params({"train": {"pretrained": False, "hflip": True, "use_gpu": False},
                      "tune": {"search_space": {"hflip": {"type": "choice", "values": [True, False]}}}})
    assert p.train.hflip is True and p.train.pretrained is False


# -- YAML alias bombs (issue 28.6) ------------------------------------------------------------------

def test_yaml_alias_bomb_is_refused_fast_with_a_short_message(tmp_path):
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]  # 9**10 values
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\ntrain:\n  epochs: *a9\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"aliases \(\*name\) expand to more than 10000 values") as err:
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - start < 2 and len(str(err.value)) < 400   # was a 722 MB message


def test_recursive_alias_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("train: &x\n  epochs: [*x]\n")
    with pytest.raises(ConfigError, match="recursive"):
        load_params(tmp_path / "params.yaml")


def test_a_few_aliases_still_load_and_long_values_are_quoted_short(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: &lr 0.01\ntune:\n  search_space:\n"
                                          "    lr: {type: choice, values: [*lr, 0.1]}\n")
    assert load_params(tmp_path / "params.yaml").train.lr == 0.01
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"model": "x" * 100_000}})
    assert len(str(err.value)) < 600


def test_a_components_default_for_a_params_key_is_the_schemas():
    """The stages build LoopConfig, Scaling and SweepOptions from their sections whole
    (build_loop_config, Scaling.from_train, SweepOptions.from_params). A default a component keeps
    for a key of that section must be the schema's value, or it is a second source that drifts
    (SweepOptions.max_epochs was 10 while tune.max_epochs was 8)."""
    from dataclasses import MISSING, fields

    from trainwise.components.training.driver import Scaling
    from trainwise.components.training.loop_config import LoopConfig
    from trainwise.components.tuning.sweep import SweepOptions
    from trainwise.pipelines.config import TrainParams, TuneParams

    drift = [f"{cls.__name__}.{f.name}: {f.default!r}, the schema {getattr(section, f.name)!r}"
             for cls, section in ((LoopConfig, TrainParams()), (Scaling, TrainParams()), (SweepOptions, TuneParams()))
             for f in fields(cls)
             if f.default is not MISSING and hasattr(section, f.name) and f.default != getattr(section, f.name)]
    assert drift == []
    assert SweepOptions.from_params(TuneParams()).max_epochs == TuneParams().max_epochs
    assert Scaling.from_train(TrainParams()).placement_strategy == TrainParams().placement_strategy
