"""infra/: configs that would only fail on a real cloud are checked here against what ships
with the installed tools (Ray's cluster-launcher schema) and for the fields that matter."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def test_cluster_launcher_config_matches_rays_schema():
    config = _yaml(INFRA / "ray" / "cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import validate_config

    validate_config(config)  # Ray's own extra checks (head type exists, min <= max workers, ...)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head["resources"] == {} and gpu and all(t["resources"].get("GPU", 0) >= 1 for t in gpu)
    assert all(t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in gpu)
    assert any("torch==2.13.0" in c and "pip install" in c for c in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"] and "data" in config["rsync_exclude"]


def test_cluster_launcher_schema_rejects_a_broken_config():
    config = _yaml(INFRA / "ray" / "cluster.yaml")
    config["available_node_types"]["worker.gpu"]["min_workers"] = "two"
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def _containers(pod_template):
    return pod_template["spec"]["containers"]


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests(name, kind):
    doc = _yaml(INFRA / "k8s" / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == ray.__version__  # the image's Ray must match the client's
    head = _containers(spec["headGroupSpec"]["template"])[0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu_group,) = spec["workerGroupSpecs"]
    worker = _containers(gpu_group["template"])[0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == worker["resources"]["requests"]["nvidia.com/gpu"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu_group["minReplicas"] <= gpu_group["maxReplicas"]
    for c in (head, worker):  # credentials come from a Secret, never inline
        assert c["envFrom"] == [{"secretRef": {"name": "trainwise-credentials"}}]
        assert not [e for e in c.get("env", []) if any(s in e["name"] for s in ("SECRET", "PASSWORD", "TOKEN"))]
    if kind == "RayJob":
        assert "trainwise run" in doc["spec"]["entrypoint"] and "dvc pull" in doc["spec"]["entrypoint"]
        assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_mlflow_compose_binds_localhost_and_holds_no_secrets():
    compose = _yaml(INFRA / "mlflow" / "docker-compose.yaml")
    services = compose["services"]
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith(("127.0.0.1:", "${MLFLOW_BIND:-127.0.0.1}:")), port
        for key, value in (svc.get("environment") or {}).items():
            if any(s in key for s in ("PASSWORD", "SECRET", "ACCESS_KEY")):
                assert str(value).startswith("${"), f"{key} must come from the environment"
    cmd = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in cmd and "--artifacts-destination" in cmd
