"""Optional: one tiny generation on a real cluster (kind, k3d or any other), the GPU stages as Jobs.

Skipped unless SELFTRAIN_CLUSTER_IMAGE names the project's image as the cluster can pull it and
SELFTRAIN_CLUSTER_ROOT an s3:// artifact root that both this machine and the pods reach (AWS_* in the
environment here; in the pods through kubernetes.env or the service account). Run it with

    kind create cluster && docker build -t selftrain:cpu . && kind load docker-image selftrain:cpu
    kubectl apply -f k8s/manifests/namespace.yaml -f k8s/manifests/rbac.yaml -f k8s/manifests/priorityclass.yaml
    SELFTRAIN_CLUSTER_IMAGE=selftrain:cpu SELFTRAIN_CLUSTER_ROOT=s3://bucket/selftrain-e2e \\
    SELFTRAIN_CLUSTER_ENV='{"AWS_ENDPOINT_URL": "http://minio.minio:9000"}' pytest -m cluster

(the pods need credentials for the bucket: IRSA / workload identity on the `selftrain` account, or a
MinIO that lets them in)."""

import json
import os

import pytest

from conftest import write_tiny_params
from flows.self_training import self_training
from selftrain import artifacts
from selftrain.layout import Generation

IMAGE, ROOT = os.environ.get("SELFTRAIN_CLUSTER_IMAGE"), os.environ.get("SELFTRAIN_CLUSTER_ROOT")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not (IMAGE and ROOT),
        reason="no cluster: set SELFTRAIN_CLUSTER_IMAGE and SELFTRAIN_CLUSTER_ROOT (see this file)",
    ),
]


def test_one_generation_on_a_real_cluster(tmp_path):
    small = {"memory": "2Gi", "cpu": "1"}
    overrides = {
        "kubernetes.enabled": True,
        "kubernetes.image": IMAGE,
        "kubernetes.image_pull_policy": "IfNotPresent",
        "kubernetes.priority_class": None,
        "kubernetes.env": json.loads(os.environ.get("SELFTRAIN_CLUSTER_ENV", "{}")),
        "resources": {
            "train-teacher": small,
            "infer": {**small, "parallelism": 2},
            "train-student": small,
            "evaluate": small,
        },
        "infer.parts": 2,
        "prefect.cache": False,
    }
    result = self_training(str(write_tiny_params(tmp_path / "params.yaml")), ROOT, generations=1, overrides=overrides)
    assert "| gen1 |" in result["table"]
    g = Generation(ROOT, "gen1")
    assert artifacts.read_json(g.promoted)["generation"] == "gen1"
    assert not artifacts.exists(f"{g.logits}.parts")  # the Indexed Job's parts were joined
