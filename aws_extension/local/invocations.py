"""The sagemaker-runtime API of local endpoints: InvokeEndpoint and InvokeEndpointAsync reach the endpoint's server
process with SageMaker's limits and error shapes; async requests wait in the endpoint's queue, one at a time, and
their answers (or failures) are written to S3 as SageMaker does."""

from __future__ import annotations

import http.client
import json
import logging
import queue
import re
import threading
import uuid
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

from ..core.aws import split_s3_uri

if TYPE_CHECKING:
    from .runtime import Runtime, Served

log = logging.getLogger(__name__)

CONTAINER = "primary"  # SageMaker's name for a model's single container, in its error messages
MAX_PAYLOAD = 6 * 1024 * 1024  # InvokeEndpoint: request and response, 6 MB each
INVOKE_TIMEOUT = 60.0  # InvokeEndpoint: the container must answer within 60 s
ASYNC_TIMEOUT, ASYNC_MAX_TIMEOUT = 900, 3600  # InvokeEndpointAsync's InvocationTimeoutSeconds: default, maximum
ASYNC_MAX_BODY = 1024 ** 3  # 1 GB in and out
ASYNC_INLINE_BODY = 128_000
TIMED_OUT = (f"Your invocation timed out while waiting for a response from container {CONTAINER}. "
             f"Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again.")

Response = Tuple[int, Dict[str, str], object]  # what a moto handler returns (status also in the headers)


class Failure(Exception):
    """An invocation that got no usable answer from the container (timeout, too large, process gone)."""


def _error(status: int, code: str, message: str, **fields) -> Response:
    body = json.dumps({"Message": message, **fields})
    return status, {"status": str(status), "x-amzn-ErrorType": code, "Content-Type": "application/json"}, body


def _join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


class Invocations:
    """Runtime's half that answers invocations; the other half (runtime.py) starts, watches and stops processes."""

    def _find(self, account: str, region: str, name: str) -> Tuple[Optional[Served], Optional[Response]]:
        from moto.sagemaker.models import sagemaker_backends

        served = self._endpoints.get((account, region, name))
        exists = name in sagemaker_backends[account][region].endpoints
        if not exists or served is None or served.status != "InService":  # AWS: only InService endpoints exist here
            return None, _error(400, "ValidationError", f"Endpoint {name} of account {account} not found.")
        return served, None

    def _post(self, served: Served, body: bytes, content_type: Optional[str], accept: Optional[str],
              timeout: float, limit: int) -> Tuple[int, str, bytes]:
        if served.port is None or served.proc is None or served.proc.poll() is not None:
            raise Failure(f"The inference server of endpoint {served.name} is not running.")
        headers = {"Content-Length": str(len(body))}
        headers.update({k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v})
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=timeout)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read(limit + 1)
            if len(data) > limit:
                raise Failure(f"The response from container {CONTAINER} is larger than {limit} bytes, the limit "
                              f"of this invocation (response too large).")
            return answer.status, answer.getheader("Content-Type") or "application/octet-stream", data
        except TimeoutError:
            raise Failure(TIMED_OUT) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(f"The connection to container {CONTAINER} failed: {exc}.") from None
        finally:
            conn.close()

    def _model_error(self, served: Served, status: int, message: str) -> Response:
        account, region, name = served.key
        kind = "client" if 400 <= status < 500 else "server"
        return _error(424, "ModelError", f'Received {kind} error ({status}) from {CONTAINER} with message "{message}". '
                                         f"See {served.log_path} for more information.",
                      OriginalStatusCode=status, OriginalMessage=message,
                      LogStreamArn=f"arn:aws:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{name}"
                                   f":log-stream:{served.variant}/local")

    def invoke(self, account: str, region: str, name: str, body: bytes, headers) -> Response:
        served, refused = self._find(account, region, name)
        if refused:
            return refused
        if served.async_config:
            return _error(400, "ValidationError", f"Endpoint {name} is an asynchronous endpoint: "
                                                  f"use InvokeEndpointAsync with an S3 InputLocation.")
        if len(body) > MAX_PAYLOAD:
            return _error(400, "ValidationError", f"Request {uuid.uuid4()} has oversize body: {len(body)} bytes, "
                                                  f"over the {MAX_PAYLOAD} bytes (6 MB) InvokeEndpoint accepts.")
        try:
            status, content_type, data = self._post(served, body, headers.get("Content-Type"), headers.get("Accept"),
                                                    INVOKE_TIMEOUT, MAX_PAYLOAD)
        except Failure as exc:
            return self._model_error(served, 0, str(exc))
        if status != 200:
            return self._model_error(served, status, data.decode("utf-8", "replace"))
        return 200, {"status": "200", "Content-Type": content_type,
                     "x-Amzn-Invoked-Production-Variant": served.variant}, data

    def invoke_async(self, account: str, region: str, name: str, body: bytes, headers) -> Response:
        served, refused = self._find(account, region, name)
        if refused:
            return refused
        output = (served.async_config or {}).get("OutputConfig") or {}
        if not output.get("S3OutputPath"):
            return _error(400, "ValidationError", f"Endpoint {name} is not an asynchronous endpoint: use InvokeEndpoint.")
        location = headers.get("X-Amzn-SageMaker-InputLocation")
        if bool(location) == bool(body):
            return _error(400, "ValidationError", "Provide exactly one of InputLocation and Body.")
        if location and not re.match(r"^s3://[^/]+/.+", location):
            return _error(400, "ValidationError", f"InputLocation {location!r} is not an S3 URI (s3://bucket/key).")
        if len(body) > ASYNC_INLINE_BODY:
            return _error(400, "ValidationError", f"The inline Body is {len(body)} bytes; the limit is {ASYNC_INLINE_BODY}.")
        try:
            timeout = int(headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds") or ASYNC_TIMEOUT)
        except ValueError:
            timeout = 0
        if not 1 <= timeout <= ASYNC_MAX_TIMEOUT:
            return _error(400, "ValidationError", f"InvocationTimeoutSeconds must be 1 to {ASYNC_MAX_TIMEOUT}.")
        inference_id = headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        job = {"id": inference_id, "input": location, "body": body, "timeout": timeout,
               "content_type": headers.get("X-Amzn-SageMaker-Content-Type"),
               "accept": headers.get("X-Amzn-SageMaker-Accept"),
               "output": _join(output["S3OutputPath"], f"{inference_id}.out"),
               "failure": _join(output.get("S3FailurePath") or output["S3OutputPath"], f"{inference_id}-error.out")}
        with served.lock:  # one worker per endpoint: one invocation at a time, the rest wait in its queue
            served.jobs.put(job)
            if served.worker is None:
                served.worker = threading.Thread(target=self._work, args=(served,), name=f"async-{name}", daemon=True)
                served.worker.start()
        return 202, {"status": "202", "Content-Type": "application/json",
                     "X-Amzn-SageMaker-OutputLocation": job["output"],
                     "X-Amzn-SageMaker-FailureLocation": job["failure"]}, json.dumps({"InferenceId": inference_id})

    def _work(self, served: Served) -> None:
        while not served.stopped.is_set():
            try:
                job = served.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._run(served, job)
            except Exception:  # noqa: BLE001 - a worker thread has no one to raise to
                log.exception("async invocation %s on %s", job["id"], served.name)

    def _run(self, served: Served, job: dict) -> None:
        s3 = self._s3_client()
        try:
            body = job["body"] or self._read(s3, job["input"])
            status, content_type, data = self._post(served, body, job["content_type"], job["accept"],
                                                    job["timeout"], ASYNC_MAX_BODY)
        except Failure as exc:
            status, content_type, data = 0, "text/plain", str(exc).encode()
        if served.stopped.is_set():  # deleted meanwhile: nothing is written, as the queue is gone
            return
        # the model's own answer goes to S3 either way: its body on 200, its error body otherwise
        target = job["output"] if status == 200 else job["failure"]
        bucket, key = split_s3_uri(target)
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    @staticmethod
    def _read(s3, location: str) -> bytes:
        bucket, key = split_s3_uri(location)
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head["ContentLength"] > ASYNC_MAX_BODY:
                raise Failure(f"The input {location} is {head['ContentLength']} bytes, over the 1 GB limit.")
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the failure location
            raise Failure(f"Could not read the input {location}: {exc}") from None

    def _s3_client(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            env = self.aws_env
            self._s3 = boto3.client("s3", endpoint_url=env.get("AWS_ENDPOINT_URL"), region_name=env.get("AWS_REGION"),
                                    aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                                    aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                                    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
        return self._s3


def patch_moto(current: Callable[[], Optional[Runtime]]) -> None:
    """Route moto's InvokeEndpoint / InvokeEndpointAsync to the runtime while one is on (moto's canned answers if not)."""
    from urllib.parse import unquote

    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse as Handler

    original_setup, original_sync, original_async = Handler.setup_class, Handler.invoke_endpoint, Handler.invoke_endpoint_async

    def setup_class(self, request, full_url=None, headers=None, use_raw_body=None):
        # bodies are the container's business (images, any bytes): moto would decode them as UTF-8
        return original_setup(self, request, full_url, headers, True if current() else use_raw_body)

    def call(method: str, fallback):
        def handler(self):
            runtime = current()
            if runtime is None:
                return fallback(self)
            name = unquote(self.path.split("?")[0].split("/")[2])
            body = self.raw_body if isinstance(self.raw_body, bytes) else (self.raw_body or "").encode()
            return getattr(runtime, method)(self.current_account, self.region, name, body, self.headers)

        handler.__name__ = fallback.__name__
        return handler

    Handler.setup_class = setup_class
    Handler.invoke_endpoint = call("invoke", original_sync)
    Handler.invoke_endpoint_async = call("invoke_async", original_async)
