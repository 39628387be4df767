"""Endpoints on the emulator with its runtime on: each runs the inference server as a local process, and
sagemaker-runtime (boto3, as the tab uses it) reaches it with SageMaker's limits and error shapes."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from aws_extension.core import generation
from aws_extension.core.endpoints import EndpointSpec, deploy, wait_until_settled
from aws_extension.core.errors import UserError
from aws_extension.local import invocations
from aws_extension.local.emulator import LOCAL_IMAGE

REALTIME, ASYNC = "local-rt", "local-async"


def request(cloud, **payload) -> dict:
    return {"task": "txt2img", "payload": {"steps": 2, "width": 64, "height": 64, "seed": 1, **payload},
            "models": {"checkpoint": cloud["tiny-sd1"]}}


def settle(cloud, name: str) -> list:
    seen: list = []
    wait_until_settled(cloud["aws"], name, timeout=150, poll=0.2, on_status=seen.append)
    return seen


@pytest.fixture(scope="module")
def endpoints(cloud):
    """One real-time and one async endpoint for the module: their servers start side by side."""
    for name, kind in ((REALTIME, "real-time"), (ASYNC, "async")):
        deploy(cloud["aws"], EndpointSpec(name=name, endpoint_type=kind, image_uri=LOCAL_IMAGE, min_instances=1,
                                          autoscaling=False), background=False)
    return {name: settle(cloud, name) for name in (REALTIME, ASYNC)}


@pytest.fixture(scope="module")
def runtime(cloud):
    return cloud["aws"].client("sagemaker-runtime")


def model_error(call) -> dict:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response


def test_realtime_endpoint_is_in_service_once_its_server_is_ready_and_generates(endpoints, cloud, runtime):
    assert endpoints[REALTIME] == ["Creating", "InService"], endpoints
    log = (cloud["emulator"].work_dir / f"{REALTIME}.log").read_text()
    assert "engine ready" in log  # InService came after the server's /ping said ready
    answer = runtime.invoke_endpoint(EndpointName=REALTIME, Body=json.dumps(request(cloud)),
                                     ContentType="application/json", Accept="application/json")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert answer["InvokedProductionVariant"] == "AllTraffic" and answer["ContentType"] == "application/json"
    body = json.loads(answer["Body"].read())
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (64, 64)
    assert json.loads(body["info"])["sd_model_name"] == "tiny-sd1"


def test_realtime_errors_come_back_as_sagemaker_reports_them(endpoints, cloud, runtime, monkeypatch):
    # the container's 400 as a ModelError (HTTP 424) carrying its status and body
    err = model_error(lambda: runtime.invoke_endpoint(EndpointName=REALTIME, ContentType="application/json",
                                                      Body=json.dumps(request(cloud, width=65))))
    assert err["Error"]["Code"] == "ModelError" and err["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err["OriginalStatusCode"] == 400 and "width" in json.loads(err["OriginalMessage"])["error"]
    assert err["Error"]["Message"].startswith("Received client error (400) from primary with message")
    # InvokeEndpoint's 6 MB request limit
    err = model_error(lambda: runtime.invoke_endpoint(EndpointName=REALTIME, ContentType="application/json",
                                                      Body=b" " * (6 * 1024 * 1024 + 1)))
    assert err["Error"]["Code"] == "ValidationError" and "oversize body" in err["Error"]["Message"]
    # an unknown name, and an async endpoint invoked in real time
    err = model_error(lambda: runtime.invoke_endpoint(EndpointName="nowhere", Body=b"{}"))
    assert err["Error"] == {"Code": "ValidationError", "Message": "Endpoint nowhere of account 123456789012 not found."}
    err = model_error(lambda: runtime.invoke_endpoint(EndpointName=ASYNC, Body=b"{}"))
    assert err["Error"]["Code"] == "ValidationError" and "InvokeEndpointAsync" in err["Error"]["Message"]
    # the 60 s answer limit and the 6 MB response limit (shrunk here: the emulator runs in this process)
    monkeypatch.setattr(invocations, "INVOKE_TIMEOUT", 0.01)
    err = model_error(lambda: runtime.invoke_endpoint(EndpointName=REALTIME, Body=json.dumps(request(cloud)),
                                                      ContentType="application/json"))
    assert err["Error"]["Code"] == "ModelError" and err["OriginalStatusCode"] == 0
    assert "timed out while waiting for a response from container primary" in err["OriginalMessage"]
    monkeypatch.setattr(invocations, "INVOKE_TIMEOUT", 60.0)
    monkeypatch.setattr(invocations, "MAX_PAYLOAD", 2000)
    err = model_error(lambda: runtime.invoke_endpoint(EndpointName=REALTIME, Body=json.dumps(request(cloud)),
                                                      ContentType="application/json"))
    assert err["Error"]["Code"] == "ModelError" and "response too large" in err["OriginalMessage"]


def wait_for_object(s3, uri: str, timeout: float = 120):
    bucket, _, key = uri[len("s3://"):].partition("/")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchKey":
                raise
        time.sleep(0.2)
    raise AssertionError(f"{uri} did not appear")


def test_async_endpoint_writes_answers_and_failures_to_s3(endpoints, cloud, runtime):
    assert endpoints[ASYNC][-1] == "InService", endpoints  # its server started beside the real-time one's
    aws, s3 = cloud["aws"], cloud["aws"].client("s3")
    calls = []
    for body in (request(cloud, width=65), request(cloud, seed=7)):  # queued one after the other
        key = f"inference/input/{uuid.uuid4()}.json"
        s3.put_object(Bucket=aws.bucket, Key=key, Body=json.dumps(body), ContentType="application/json")
        calls.append(runtime.invoke_endpoint_async(EndpointName=ASYNC, InputLocation=f"s3://{aws.bucket}/{key}",
                                                   ContentType="application/json"))
    bad, good = calls
    for call in calls:
        assert call["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert call["OutputLocation"] == f"s3://{aws.bucket}/inference/output/{call['InferenceId']}.out"
        assert call["FailureLocation"] == f"s3://{aws.bucket}/inference/failure/{call['InferenceId']}-error.out"
    answer = wait_for_object(s3, good["OutputLocation"])
    assert answer["ContentType"] == "application/json"
    body = json.loads(answer["Body"].read())
    assert json.loads(body["info"])["all_seeds"] == [7] and len(body["images"]) == 1
    failure = json.loads(wait_for_object(s3, bad["FailureLocation"], timeout=5)["Body"].read())
    assert "width" in failure["error"]
    bucket, _, key = bad["OutputLocation"][len("s3://"):].partition("/")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=key)
    err = model_error(lambda: runtime.invoke_endpoint_async(EndpointName=REALTIME, InputLocation=good["OutputLocation"]))
    assert err["Error"]["Code"] == "ValidationError" and "not an asynchronous endpoint" in err["Error"]["Message"]


def test_the_tabs_generation_client_works_unchanged_on_local_endpoints(endpoints, cloud):
    aws, models = cloud["aws"], {"checkpoint": cloud["tiny-sd1"]}
    states = []
    for name in (REALTIME, ASYNC):
        made = generation.invoke(aws, name, "txt2img", {"steps": 2, "width": 64, "height": 64, "seed": 3}, models,
                                 on_state=lambda state, message: states.append(state), timeout=120)
        assert len(made.images) == 1 and made.info["all_seeds"] == [3]
        # the server's own errors, through ModelError (real-time) and the failure location (async)
        with pytest.raises(UserError, match="x.safetensors"):
            generation.invoke(aws, name, "txt2img", {"steps": 2, "width": 64, "height": 64},
                              {"checkpoint": f"s3://{aws.bucket}/models/x.safetensors"}, timeout=120)
    assert "queued" in states and states[-1] == "done"


def test_deleting_an_endpoint_stops_its_server(endpoints, cloud, runtime):
    proc = cloud["emulator"].runtime.process(ASYNC)
    assert proc.poll() is None
    cloud["aws"].client("sagemaker").delete_endpoint(EndpointName=ASYNC)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):  # exited and reaped: the pid is gone
        os.kill(proc.pid, 0)
    err = model_error(lambda: runtime.invoke_endpoint_async(EndpointName=ASYNC, InputLocation="s3://b/k"))
    assert err["Error"]["Message"] == f"Endpoint {ASYNC} of account 123456789012 not found."


def failed_reason(cloud, name: str, environment=None) -> str:
    """Deploy an endpoint (with extra environment in its model, made by hand) and return its FailureReason."""
    aws, sm = cloud["aws"], cloud["aws"].client("sagemaker")
    if environment is None:
        deploy(aws, EndpointSpec(name=name, endpoint_type="real-time", image_uri=LOCAL_IMAGE, autoscaling=False),
               background=False)
    else:
        sm.create_model(ModelName=name, ExecutionRoleArn=aws.settings.role_arn,
                        PrimaryContainer={"Image": LOCAL_IMAGE, "Environment": environment})
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1}])
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert settle(cloud, name)[-1] == "Failed"
    return sm.describe_endpoint(EndpointName=name)["FailureReason"]


def test_endpoints_whose_server_cannot_start_fail_with_the_reason(cloud, monkeypatch, tmp_path):
    monkeypatch.setenv("SD_SAGEMAKER_SERVE_PYTHON", str(tmp_path / "no-such-python"))
    reason = failed_reason(cloud, "no-python")
    assert "no-such-python" in reason and "container/install.sh" in reason
    # a Python without torch and diffusers (a bare venv)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    monkeypatch.setenv("SD_SAGEMAKER_SERVE_PYTHON", str(tmp_path / "bare" / "bin" / "python"))
    reason = failed_reason(cloud, "bare-python")
    assert "lacks the inference server's packages (torch, diffusers)" in reason and "install.sh" in reason
    # a server that exits while starting: the reason carries the end of its log
    monkeypatch.delenv("SD_SAGEMAKER_SERVE_PYTHON")
    reason = failed_reason(cloud, "exits", {"SD_SAGEMAKER_SHUTDOWN_SECONDS": "soon"})
    assert "exited (code 1) before it was ready" in reason and "could not convert string to float: 'soon'" in reason
