"""Deploy: model + endpoint config + endpoint of one name, tagged ours, then autoscaling once InService."""

from __future__ import annotations

import logging
import random
import re
import string
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from ..aws import Aws, translate
from ..bootstrap import find_role
from ..compat import BaseModel, ValidationError
from ..errors import ConfigError, NotFound, Refused, UserError
from ..models.lookup import checkpoint_uri
from . import catalog, code_package, images, scaling
from .catalog import EndpointRecord

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
TYPES = {"async": "async", "real-time": "real-time", "realtime": "real-time", "real_time": "real-time"}
STARTUP_TIMEOUT = 600  # seconds for the image pull plus the server's first /ping; SD images are large
# AWS's prebuilt image first installs the server's wheels from its code package (about a minute), then starts
# TorchServe; a container that cannot serve stops answering /ping and fails the deploy after this long
PREBUILT_STARTUP_TIMEOUT = 900

POLL_SECONDS = 5.0  # tests shrink this
SETTLE_SECONDS = 45 * 60  # a GPU endpoint takes ~3-10 min; AWS gives up on its own well before this
SETTLED = ("InService", "Failed", "OutOfService")
MAX_POLL_ERRORS = 10

# SageMaker hosts GPU instances on an AMI with NVIDIA driver 470 (CUDA 11.4) unless the variant asks for another.
# Our own image (container/Dockerfile: CUDA 12.x, no compat libraries) then sees no GPU: ask for the newest AMI with a
# CUDA 12 driver (driver 550, CUDA 12.4; CUDA 12.x images run on it by minor-version compatibility). The allowed
# values are botocore's enum ProductionVariantInferenceAmiVersion (a test checks this one is among them). AWS's
# prebuilt image carries CUDA compat libraries and gets no AMI of ours.
INFERENCE_AMI_VERSION = "al2-ami-sagemaker-inference-gpu-3-1"
# NVIDIA families that AMI supports (g: g4dn, g5, g6, g6e; p: p3, p4d, p4de, p5, p5e, p5en). Blackwell (g7e, p6) needs
# a newer driver than 550, and Neuron (inf, trn) and CPU types take none.
GPU_FAMILY = re.compile(r"^ml\.(g4dn|g5|g6|g6e|p3|p4d|p4de|p5|p5e|p5en)\.")

NO_ROLE = ("No SageMaker execution role: pass --role-arn, set SD_SAGEMAKER_ROLE_ARN, "
           "or run `python -m aws_extension setup --create-role`.")
# AWS's prebuilt PyTorch image runs SageMaker's inference toolkit (TorchServe) on our code package
TOOLKIT_ENVIRONMENT = {
    "SAGEMAKER_PROGRAM": "inference.py",
    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # one GPU, one pipeline
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600",  # seconds per invocation: long generations (async allows an hour)
    # ...which the toolkit (2.0.25) appends to its default-ts.properties, whose last line has no newline: the
    # setting is glued to it and lost, and TorchServe would kill every invocation after its default 120 s. It
    # reads TS_* variables too (enable_envvars_config=true comes before the broken line): say it again there.
    "TS_DEFAULT_RESPONSE_TIMEOUT": "3600",
    # TorchServe's limit for a worker's start: model_fn returns once the engine is up and any preload is loaded
    "TS_DEFAULT_STARTUP_TIMEOUT": "1200",
    "TS_MAX_REQUEST_SIZE": str(100 * 1024 * 1024),  # base64 images both ways (TorchServe's default is 6.5 MB)
    "TS_MAX_RESPONSE_SIZE": str(100 * 1024 * 1024),
}


class EndpointSpec(BaseModel):
    """What the Deploy form (or the CLI) asks for; invalid input raises Refused when constructed."""

    name: Optional[str] = None
    endpoint_type: str = "async"
    instance_type: str = "ml.g5.2xlarge"
    min_instances: Optional[int] = None  # default 0 for async, 1 for real-time
    max_instances: int = 1
    autoscaling: bool = True
    role_arn: Optional[str] = None
    image_uri: Optional[str] = None
    # a cloud checkpoint (as `generate --checkpoint` takes it) the server loads before its first request
    preload_checkpoint: Optional[str] = None

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise Refused(self._sentence(data.get("name"), f"{'.'.join(map(str, first['loc']))} {first['msg']}")) from None
        self._check()

    @staticmethod
    def _sentence(name: Optional[str], problem: str) -> str:
        who = f"endpoint '{name}'" if name else "the endpoint"
        return f"Cannot deploy {who}: {problem}."

    def _check(self) -> None:
        # the UI sends "" for an empty box
        self.name = (self.name or "").strip() or None
        self.role_arn = (self.role_arn or "").strip() or None
        self.image_uri = (self.image_uri or "").strip() or None
        self.preload_checkpoint = (self.preload_checkpoint or "").strip() or None
        kind = TYPES.get(self.endpoint_type.strip().lower())
        problem = None
        if self.name and (len(self.name) > 63 or not NAME_PATTERN.match(self.name)):
            problem = "a name has 1 to 63 letters, digits and hyphens, and starts and ends with a letter or digit"
        elif kind is None:
            problem = f"the type '{self.endpoint_type}' is unknown (choose async or real-time)"
        elif not self.instance_type.strip().startswith("ml."):
            problem = f"'{self.instance_type}' is not a SageMaker instance type (they look like ml.g5.2xlarge)"
        elif self.max_instances < 1:
            problem = f"max instances must be at least 1, not {self.max_instances}"
        elif self.min_instances is not None and self.min_instances < 0:
            problem = f"min instances cannot be negative ({self.min_instances})"
        elif self.min_instances is not None and self.min_instances > self.max_instances:
            problem = f"min instances ({self.min_instances}) exceed max instances ({self.max_instances})"
        elif kind == "real-time" and self.min_instances == 0:
            problem = "a real-time endpoint cannot scale to zero: set min instances to 1 or more, or choose async"
        if problem:
            raise Refused(self._sentence(self.name, problem))
        self.endpoint_type = kind
        self.instance_type = self.instance_type.strip()
        if self.min_instances is None:
            self.min_instances = 0 if kind == "async" else 1

    @property
    def wanted_scaling(self) -> scaling.Scaling:
        return scaling.Scaling(enabled=self.autoscaling, min=self.min_instances, max=self.max_instances)


def random_name(endpoint_type: str) -> str:
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    return f"esd-{endpoint_type}-{suffix}"


def _exists(aws: Aws, kind: str, name: str) -> bool:
    sm = aws.client("sagemaker")
    call = {"endpoint": lambda: sm.describe_endpoint(EndpointName=name),
            "endpoint config": lambda: sm.describe_endpoint_config(EndpointConfigName=name),
            "model": lambda: sm.describe_model(ModelName=name)}[kind]
    try:
        call()
        return True
    except Exception as exc:
        if scaling.missing(exc):
            return False
        with translate(f"checking whether the {kind} '{name}' exists"):
            raise


def _refuse_taken(aws: Aws, name: str) -> None:
    # moto silently overwrites duplicates; AWS refuses them halfway through: check all three first
    if _exists(aws, "endpoint", name):
        raise Refused(f"An endpoint named '{name}' already exists: choose another name or delete it first.")
    for kind in ("endpoint config", "model"):
        if _exists(aws, kind, name):
            raise Refused(f"An {kind} named '{name}' is left from an earlier endpoint: choose another name, "
                          f"or remove it (`python -m aws_extension cleanup` removes ours).")


def container_spec(aws: Aws, image_uri: Optional[str], spec: Optional[EndpointSpec] = None,
                   preload_uri: Optional[str] = None) -> dict:
    """The model's PrimaryContainer: that image, else AWS's prebuilt PyTorch image running our code package.

    The server reads what it runs on from the environment: the endpoint type and instance type (an unusable GPU on a
    GPU type is a failed start, not a slow CPU endpoint), and the checkpoint to load before its first request."""
    environment = {"SD_SAGEMAKER_BUCKET": aws.bucket, "AWS_DEFAULT_REGION": aws.region, "HF_HUB_OFFLINE": "1"}
    if spec is not None:
        environment.update(SD_SAGEMAKER_ENDPOINT_TYPE=spec.endpoint_type, SD_SAGEMAKER_INSTANCE_TYPE=spec.instance_type)
    if preload_uri:
        environment["SD_SAGEMAKER_PRELOAD_CHECKPOINT"] = preload_uri
    if image_uri:
        return {"Image": image_uri, "Environment": environment}
    image = images.prebuilt_image_uri(aws.region)  # refuses an unknown region before anything is uploaded
    environment.update(TOOLKIT_ENVIRONMENT, SAGEMAKER_REGION=aws.region)
    return {"Image": image, "ModelDataUrl": code_package.ensure_uploaded(aws), "Environment": environment}


def initial_instances(spec: EndpointSpec) -> int:
    return max(1, spec.min_instances or 0)  # AWS needs >= 1 at creation, even for async


def inference_ami(instance_type: str, own_image: bool) -> Optional[str]:
    """The InferenceAmiVersion our own image needs on that instance type (None: SageMaker's default)."""
    return INFERENCE_AMI_VERSION if own_image and GPU_FAMILY.match(instance_type) else None


def endpoint_config(name: str, spec: EndpointSpec, bucket: str, startup_timeout: int = STARTUP_TIMEOUT,
                    own_image: bool = False) -> dict:
    variant = {
        "VariantName": scaling.VARIANT, "ModelName": name, "InstanceType": spec.instance_type,
        "InitialInstanceCount": initial_instances(spec),
        "InitialVariantWeight": 1.0,
        "ContainerStartupHealthCheckTimeoutInSeconds": startup_timeout,
        "ModelDataDownloadTimeoutInSeconds": STARTUP_TIMEOUT,
    }
    ami = inference_ami(spec.instance_type, own_image)
    if ami:
        variant["InferenceAmiVersion"] = ami
    config = {"EndpointConfigName": name, "ProductionVariants": [variant]}
    if spec.endpoint_type == "async":
        config["AsyncInferenceConfig"] = {
            "OutputConfig": {"S3OutputPath": f"s3://{bucket}/inference/output/",
                             "S3FailurePath": f"s3://{bucket}/inference/failure/"},
            # one generation at a time per GPU; the rest wait in the queue, which drives the scaling
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
        }
    return config


def _roll_back(aws: Aws, name: str, created: List[str]) -> List[str]:
    """Delete what a failed deploy created, newest first; returns what could not be deleted."""
    left = []
    for kind in reversed(created):
        try:
            catalog._delete(aws, kind, name)
        except UserError as exc:
            log.warning("%s", exc)
            left.append(kind)
    return left


def deploy(aws: Aws, spec: EndpointSpec, background: bool = True) -> EndpointRecord:
    """Start creating the endpoint; returns at once (Creating). Autoscaling follows once it is InService."""
    role = spec.role_arn or aws.settings.role_arn or find_role(aws)
    if not role:
        raise ConfigError(NO_ROLE)
    image = spec.image_uri or aws.settings.image_uri  # none: AWS's prebuilt image with our code package
    name = spec.name or random_name(spec.endpoint_type)
    for _ in range(5):  # a generated name that happens to be taken: draw another
        if spec.name or not _exists(aws, "endpoint", name):
            break
        name = random_name(spec.endpoint_type)
    _refuse_taken(aws, name)
    bucket = aws.bucket
    preload = None
    if spec.preload_checkpoint:  # refused (NotFound) before anything is created
        preload = checkpoint_uri(aws, spec.preload_checkpoint)
    tags = scaling.endpoint_tags(name, spec.endpoint_type, spec.wanted_scaling)
    sm = aws.client("sagemaker")
    created: List[str] = []
    try:
        container = container_spec(aws, image, spec, preload)
        with translate("creating its model"):
            sm.create_model(ModelName=name, ExecutionRoleArn=role, Tags=tags, PrimaryContainer=container)
        created.append("model")
        startup = STARTUP_TIMEOUT if image else PREBUILT_STARTUP_TIMEOUT
        with translate("creating its endpoint config"):
            sm.create_endpoint_config(**endpoint_config(name, spec, bucket, startup, own_image=bool(image)), Tags=tags)
        created.append("endpoint config")
        with translate("creating the endpoint"):
            sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags)
    except BaseException as exc:
        left = _roll_back(aws, name, created)
        if not isinstance(exc, UserError):
            raise
        message = f"Could not deploy endpoint '{name}': {str(exc).rstrip('.')}."
        if left:
            message += f" Its {' and '.join(left)} could not be removed: run `python -m aws_extension cleanup`."
        raise type(exc)(message) from exc
    if background:
        watch(aws, name)
    try:
        return catalog.describe(aws, name)
    except UserError:  # the endpoint is on its way; a failed read-back must not look like a failed deploy
        return EndpointRecord(name=name, type=spec.endpoint_type, status="Creating", instance_type=spec.instance_type,
                              autoscaling=spec.autoscaling, min_instances=spec.min_instances,
                              max_instances=spec.max_instances)


def running_cost(name: str, instance_type: Optional[str], count: int, autoscaling: bool) -> str:
    """What a deploy left running before its autoscaling is attached, and what that costs per hour."""
    running = f"Endpoint {name} runs {catalog.running_text(instance_type, count)}"
    if autoscaling:
        return (f"{running} until autoscaling is attached: run `python -m aws_extension endpoints list` "
                f"once it is InService.")
    return f"{running} until it is deleted (`python -m aws_extension endpoints delete {name}`)."


def _poll(aws: Aws, name: str, timeout: float, poll: Optional[float],
          on_status: Optional[Callable[[str], None]]) -> Tuple[Optional[str], bool]:
    """(last status or None if the endpoint is gone, whether it settled before the timeout)."""
    deadline = time.monotonic() + timeout
    last: Optional[str] = "?"
    errors = 0
    while True:
        try:
            raw = catalog._describe_raw(aws, name)
            errors = 0
        except UserError:
            errors += 1  # throttling or a network blip: try again at the next poll
            if errors >= MAX_POLL_ERRORS:
                raise
        else:
            status = raw["EndpointStatus"] if raw else None
            if status != last and on_status:
                on_status(status or "Deleted")
            last = status
            if status is None or status in SETTLED:
                return status, True
        if time.monotonic() >= deadline:
            return last, False
        time.sleep(POLL_SECONDS if poll is None else poll)


def wait_until_settled(aws: Aws, name: str, timeout: float = SETTLE_SECONDS, poll: Optional[float] = None,
                       on_status: Optional[Callable[[str], None]] = None) -> str:
    """Wait until the endpoint is InService or Failed, apply its autoscaling, return the status."""
    status, settled = _poll(aws, name, timeout, poll, on_status)
    if status is None:
        raise NotFound(f"Endpoint '{name}' does not exist (it may have been deleted).")
    if not settled:
        raise UserError(f"Endpoint '{name}' is still {status} after {round(timeout / 60)} minutes: "
                        f"check it in the SageMaker console.")
    if status == "InService":
        scaling.reconcile(aws, name)
    return status


_watchers: Dict[str, threading.Thread] = {}
_watchers_lock = threading.Lock()


def _watch(aws: Aws, name: str) -> None:
    try:
        status, settled = _poll(aws, name, SETTLE_SECONDS, None, None)
        if status == "InService":
            changed = scaling.reconcile(aws, name)
            log.info("Endpoint %s is InService%s.", name, "; autoscaling applied" if changed else "")
        elif settled and status:
            log.warning("Endpoint %s ended %s.", name, status)
    except Exception as exc:  # a daemon thread has no one to raise to; the next listing retries the scaling
        log.warning("Watching endpoint %s: %s", name, exc)
    finally:
        with _watchers_lock:
            if _watchers.get(name) is threading.current_thread():
                del _watchers[name]


def watch(aws: Aws, name: str) -> threading.Thread:
    """A daemon thread that applies the endpoint's autoscaling as soon as it is InService."""
    thread = threading.Thread(target=_watch, args=(aws, name), name=f"endpoint-watch-{name}", daemon=True)
    with _watchers_lock:
        _watchers[name] = thread
    thread.start()
    return thread


def watchers() -> List[threading.Thread]:
    with _watchers_lock:
        return list(_watchers.values())
