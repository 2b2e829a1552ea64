"""How the runners run the stages, not what the stages compute: the Prefect flow's retries, timeouts and cache, and
the Kubernetes Jobs it makes (`prefect`, `kubernetes` and `resources` in params.yaml). DVC and the CLI ignore these
sections, and no stage's DVC params or cache key includes them; params.py composes them with the ML sections into
the one validated params file."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from selftrain import methods
from selftrain.section import Section as _Section


class PrefectParams(_Section):
    """How the Prefect flow runs its stages; DVC and the CLI ignore this section (not part of any stage's DVC
    params)."""

    retries: int = Field(
        3, ge=0, description="retries of a stage after a transient I/O error (network, S3); other errors fail at once"
    )
    retry_backoff_s: float = Field(10.0, ge=0, description="delay before the first retry; doubled at each further one")
    timeout_s: float = Field(24 * 3600.0, gt=0, description="a stage running longer than this fails, without retries")
    timeouts_s: dict[str, float] = Field(
        default_factory=dict, description="per-stage timeouts overriding timeout_s, by stage name"
    )
    cache: bool = Field(
        True, description="skip a stage whose inputs, params and code are unchanged since a run that wrote its outputs"
    )
    result_storage: str | None = Field(
        None, description="where cached stage results live, a folder or s3://... (default: ROOT/.prefect-results)"
    )

    @field_validator("timeouts_s")
    @classmethod
    def _known_stages(cls, v: dict[str, float]) -> dict[str, float]:
        known_stage_names(set(v))
        bad = sorted(k for k, t in v.items() if not t > 0)
        if bad:
            raise ValueError(f"timeouts must be > 0 seconds: {bad}")
        return v

    def timeout(self, stage: str) -> float:
        return self.timeouts_s.get(stage, self.timeout_s)


def known_stage_names(names: set[str]) -> None:
    unknown = sorted(names - set(methods.stage_names()))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {sorted(methods.stage_names())}")


def _check_quantity(v: str) -> str:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", v):
        raise ValueError(f"'{v}' is not a Kubernetes quantity (e.g. '2', '500m', '16Gi')")
    return v


def _check_positive_quantity(v: str) -> str:
    # a pod's OMP_NUM_THREADS is its CPU request rounded up (tasks/job_manifests.py): "0" would give it 0 threads
    if float(re.sub(r"[^0-9.]", "", _check_quantity(v))) <= 0:  # the number without its suffix
        raise ValueError(f"'{v}' requests nothing; a stage's pod needs more than 0 (e.g. '2', '500m')")
    return v


Quantity = Annotated[str, AfterValidator(_check_quantity)]
PositiveQuantity = Annotated[str, AfterValidator(_check_positive_quantity)]


class StageResources(_Section):
    """What one stage's pod asks for, and where it runs."""

    gpu: int = Field(0, ge=0, description="nvidia.com/gpu limit")
    cpu: PositiveQuantity = Field("2", description="CPU request, a Kubernetes quantity ('2', '500m')")
    memory: PositiveQuantity = Field("8Gi", description="memory request and limit; a pod over it is OOMKilled")
    node_pool: str | None = Field(
        None, description="value of kubernetes.node_pool_label the node must carry (null: any node)"
    )
    parallelism: int = Field(1, gt=0, description="infer only: part pods running at once (the parts are infer.parts)")
    nodes: int = Field(
        1,
        gt=0,
        description="train-teacher / train-student: data-parallel over this many pods of `gpu` GPUs each (torchrun)",
    )
    queue: str | None = Field(
        None, description="a Kueue LocalQueue (k8s/manifests/kueue.yaml): the Job waits, suspended, for its quota"
    )

    @model_validator(mode="after")
    def _nodes_need_gpus(self) -> StageResources:
        if self.nodes > 1 and self.gpu < 1:
            raise ValueError(
                f"nodes = {self.nodes} needs gpu >= 1 per node (data-parallel training runs one process per GPU)"
            )
        return self


SECRET_LOOKING = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY", re.IGNORECASE)


class SecretKey(_Section):
    """One key of a Kubernetes Secret, handed to the stage's container as an environment variable."""

    secret: str = Field(description="the Secret's name, in kubernetes.namespace")
    key: str = Field(description="the key inside it")


class KubernetesParams(_Section):
    """Where the Prefect flow runs the stages named in `resources` as Kubernetes Jobs; DVC and the CLI ignore it."""

    enabled: bool = Field(
        False,
        description="run each stage listed in `resources` as its own Job (false: every stage in the flow's process)",
    )
    namespace: str = "selftrain"
    image: str = Field(
        "selftrain:cpu", description="the project's image (Dockerfile), its entrypoint the selftrain CLI"
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = Field(
        "selftrain",
        description="k8s/manifests/rbac.yaml's account; the bucket's access comes with it (IRSA, workload identity)",
    )
    node_pool_label: str = Field(
        "selftrain.io/pool", description="the node label (and taint key) that names a node pool"
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra container environment in clear text, e.g. AWS_ENDPOINT_URL (secrets: secret_env or "
        "env_from_secrets)",
    )
    secret_env: dict[str, SecretKey] = Field(
        default_factory=dict,
        description="environment variables read from Secrets (secretKeyRef): the value never passes through the flow",
    )
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secrets whose every key becomes an environment variable (envFrom)"
    )
    pending_timeout_s: float = Field(
        3600.0, gt=0, description="how long a pod may stay unschedulable while a node pool scales up"
    )
    image_pull_timeout_s: float = Field(
        300.0, gt=0, description="how long a pod may fail to pull its image before the stage fails"
    )
    backoff_limit: int = Field(
        2,
        ge=0,
        description="the Job's backoffLimit: pods that may fail with transient I/O (exit 75) and be "
        "replaced; any other exit fails the Job at once, and a preempted pod is replaced without counting",
    )
    deadline_s: int = Field(2 * 86400, gt=0, description="the Job's activeDeadlineSeconds")
    ttl_s: int = Field(86400, ge=0, description="ttlSecondsAfterFinished: finished Jobs are deleted after this")
    shm_size: Quantity = Field("8Gi", description="memory-backed /dev/shm for DataLoader workers")
    poll_s: float = Field(5.0, gt=0, description="how often the flow reads the Job's state")
    priority_class: str | None = Field(
        "selftrain-training", description="k8s/manifests/priorityclass.yaml's class (null: none)"
    )
    run_as_user: int = Field(
        10001,
        ge=1,
        description="the image's non-root uid (the Dockerfile's user); pods run as it, under Pod Security 'restricted'",
    )

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        # env goes in clear text into the Job and into ROOT/.kubernetes/<job>/params.yaml on the bucket
        bad = sorted(k for k in v if SECRET_LOOKING.search(k))
        if bad:
            raise ValueError(
                f"{bad} look like secrets, and env is written in clear text into every Job and the bucket: put the "
                "value in a "
                "Kubernetes Secret and name it under kubernetes.secret_env (NAME: {secret: ..., key: ...}) or "
                "kubernetes.env_from_secrets"
            )
        return v
