import pytest
import yaml

from pipelines.config import ConfigError, Params, load_params, parse_params
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
