"""moto in-process on loopback, made a little closer to AWS for what this tool does.

- SageMaker's instance-type list in moto is old (no ml.g5): any `ml.*` type is accepted.
- Endpoints start as Creating and become InService a few seconds later, so the code that waits for
  InService (autoscaling) runs as it does on AWS. A readiness hook lets a test decide instead.
- With runtime=True (`local`, `ui --local`) each endpoint runs the inference server as a local process and
  sagemaker-runtime reaches it (local/runtime.py); the endpoint is InService once that server is ready.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/sd-webui-sagemaker-execution"
LOCAL_IMAGE = "local/sd-webui-sagemaker-inference:latest"

# endpoint name -> (status, failure reason) or None to keep waiting; the default flips after a delay.
Readiness = Callable[[str, float], Optional[Tuple[str, Optional[str]]]]

_patch_lock = threading.Lock()
_patched = False
_state: Dict[str, object] = {"creating_seconds": 3.0, "readiness": None, "runtime": None}
_created_at: Dict[Tuple[str, str], float] = {}


def _default_readiness(name: str, age: float) -> Optional[Tuple[str, Optional[str]]]:
    return ("InService", None) if age >= float(_state["creating_seconds"]) else None


def _patch_moto() -> None:
    global _patched
    with _patch_lock:
        if _patched:
            return
        from moto.sagemaker import models as sm

        from .invocations import patch_moto

        patch_moto(lambda: _state["runtime"])

        # moto's own list of instance types is old (no ml.g5); AWS's is the enum in botocore's service model
        import botocore.session

        hosting_types = set(botocore.session.get_session().get_service_model("sagemaker")
                            .shape_for("ProductionVariantInstanceType").enum)

        def accept_hosting_types(self, instance_type: str) -> None:
            if instance_type not in hosting_types:
                raise sm.ValidationError(message=f"1 validation error detected: Value '{instance_type}' at "
                                                 f"'productionVariants.1.member.instanceType' failed to satisfy "
                                                 f"constraint: Member must satisfy enum value set")

        sm.FakeEndpointConfig.validate_instance_type = accept_hosting_types

        backend = sm.SageMakerModelBackend
        original_create = backend.create_endpoint
        original_describe = backend.describe_endpoint
        original_list = backend.list_endpoints
        original_delete = backend.delete_endpoint

        def advance(self) -> None:
            readiness: Readiness = _state["readiness"] or _default_readiness  # type: ignore[assignment]
            runtime = _state["runtime"]
            for name, endpoint in list(self.endpoints.items()):
                if endpoint.endpoint_status != "Creating":
                    continue
                born = _created_at.get((self.region_name, name), 0.0)
                if runtime:  # the endpoint's server decides
                    outcome = runtime.outcome(self.account_id, self.region_name, name)  # type: ignore[attr-defined]
                else:
                    outcome = readiness(name, time.monotonic() - born)
                if outcome:
                    endpoint.endpoint_status, endpoint.failure_reason = outcome
                    endpoint.last_modified_time = sm.utcnow()

        def create_endpoint(self, endpoint_name, *args, **kwargs):
            endpoint = original_create(self, endpoint_name, *args, **kwargs)
            endpoint.endpoint_status = "Creating"
            _created_at[(self.region_name, endpoint_name)] = time.monotonic()
            if _state["runtime"]:
                _state["runtime"].start_endpoint(self, endpoint_name)  # type: ignore[attr-defined]
            return endpoint

        def delete_endpoint(self, endpoint_name, *args, **kwargs):
            original_delete(self, endpoint_name, *args, **kwargs)
            if _state["runtime"]:
                _state["runtime"].stop_endpoint(self.account_id, self.region_name, endpoint_name)  # type: ignore

        def describe_endpoint(self, *args, **kwargs):
            advance(self)
            return original_describe(self, *args, **kwargs)

        def list_endpoints(self, *args, **kwargs):
            advance(self)
            return original_list(self, *args, **kwargs)

        backend.create_endpoint = create_endpoint
        backend.describe_endpoint = describe_endpoint
        backend.list_endpoints = list_endpoints
        backend.delete_endpoint = delete_endpoint
        _patched = True


class LocalEmulator:
    """AWS APIs (S3, SageMaker, autoscaling, CloudWatch, IAM, STS) on one loopback port."""

    def __init__(self, port: int = 0, creating_seconds: float = 3.0, readiness: Optional[Readiness] = None,
                 runtime: bool = False, work_dir: Optional[str] = None, startup_timeout: float = 300.0):
        """runtime=True: endpoints run the inference server as local processes, with their caches and logs in
        work_dir (default: sd-webui-sagemaker-local in the temp folder); startup_timeout bounds their start."""
        self.port = port
        _state["creating_seconds"] = creating_seconds
        _state["readiness"] = readiness
        self._server = None
        self.work_dir = Path(work_dir or Path(tempfile.gettempdir()) / "sd-webui-sagemaker-local")
        self._runtime_wanted, self.startup_timeout = runtime, startup_timeout
        self.runtime = None  # the Runtime once started

    @property
    def creating_seconds(self) -> float:
        return float(_state["creating_seconds"])

    @creating_seconds.setter
    def creating_seconds(self, seconds: float) -> None:
        _state["creating_seconds"] = seconds

    def start(self) -> "LocalEmulator":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        _patch_moto()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        if self._runtime_wanted:
            from .runtime import Runtime

            self.runtime = Runtime(self.work_dir, self.env(), startup_timeout=self.startup_timeout)
        _state["runtime"] = self.runtime  # moto's state is one per process: the emulator started last decides
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, bucket: str = "sd-webui-sagemaker-local") -> Dict[str, str]:
        """What a second shell (or a test) needs to talk to this emulator with the ordinary AWS settings."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,  # older botocore reads only this one
            "SD_SAGEMAKER_BUCKET": bucket,
            "SD_SAGEMAKER_ROLE_ARN": ROLE_ARN,
            "SD_SAGEMAKER_IMAGE_URI": LOCAL_IMAGE,
        }

    def reset(self) -> None:
        import urllib.request

        if self.runtime:
            self.runtime.stop_all()

        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset", method="POST"), timeout=10).read()
        _created_at.clear()

    def stop(self) -> None:
        if self.runtime:
            self.runtime.stop_all()
            if _state["runtime"] is self.runtime:
                _state["runtime"] = None
        if self._server is not None:
            self._server.stop()
            self._server = None
