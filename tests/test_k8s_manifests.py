"""k8s/: every manifest, and the Job the work pool's base job template renders to, validate against the
Kubernetes schemas (kubernetes-validate, strict: an unknown or misspelt field is an error)."""

import json

import kubernetes_validate
import pytest
import yaml
from prefect.utilities.templating import apply_values

from conftest import ROOT

K8S_VERSION = "1.31.0"  # the oldest minor the manifests must work on (podFailurePolicy is GA from 1.31)
CRDS = {"kueue.x-k8s.io/v1beta1"}  # optional add-ons: no schema ships with kubernetes-validate


def manifests() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", doc) for p in sorted((ROOT / "k8s/manifests").glob("*.yaml")) for i, doc in enumerate(yaml.safe_load_all(p.read_text())) if doc]


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_manifest_validates_strictly(name, doc):
    if doc["apiVersion"] in CRDS:
        assert doc["metadata"]["name"] and doc["spec"], name
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def rendered_job(**variables) -> dict:
    """The Job a flow run becomes: the template's defaults plus what the worker fills in."""
    template = json.loads((ROOT / "k8s/base-job-template.json").read_text())
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values.update(
        name="self-training-gen1",
        command="prefect flow-run execute",
        env={"PREFECT_API_URL": "http://prefect:4200/api"},
        labels={"app.kubernetes.io/name": "selftrain"},
        **variables,
    )
    config = apply_values(template["job_configuration"], values)
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    # what the worker does with these two: a command string becomes args, an env mapping becomes a list
    container["args"] = container["args"].split()
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    return job


def test_the_base_job_template_renders_a_valid_gpu_job():
    job = rendered_job()
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and container["resources"]["requests"]["memory"]
    assert pod["nodeSelector"] == {"selftrain.io/pool": "gpu"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    assert spec["podFailurePolicy"]["rules"][0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    # the image's entrypoint is `selftrain`: the flow run's own command must replace it, not follow it
    assert container["command"] == ["/usr/bin/env"] and container["args"][:2] == ["prefect", "flow-run"]


def test_a_misspelt_field_is_caught():
    job = rendered_job()
    job["spec"]["template"]["spec"]["nodeSelecter"] = job["spec"]["template"]["spec"].pop("nodeSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
