"""Generating on an endpoint: the cloud models a request names, then one invocation, real-time or through S3.

The request and the answer are the inference server's (README, "The inference server"): the WebUI API's payload
plus the models' S3 locations in; base64 PNGs carrying their infotext, the parameters and the WebUI's info out.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from typing import Callable, List, Optional, Tuple

import botocore.exceptions as bex

from . import inflight
from .aws import Aws, describe, error_code, is_not_found, split_s3_uri, translate
from .compat import BaseModel
from .endpoints import catalog, scaling
from .errors import ConfigError, Interrupted, NotFound, Refused, TransferError, UserError
from ..contract.infotext import png_parameters, with_parameters
from ..contract.request import BadRequest, parse_request

log = logging.getLogger(__name__)

JSON = "application/json"
REALTIME_LIMIT = 6_000_000  # bytes: AWS's payload limit for a real-time request and its answer
ANSWER_BYTES_PER_PIXEL = 4  # a PNG can take ~3 bytes per pixel, and base64 adds a third
ASYNC_TIMEOUT = 15 * 60.0
# At 0 instances: the alarm (1-3 min), an instance, the image pull, the server's start and the model download come
# first, 10-15 min or more; a shorter wait (and TTL) would expire the request just as the capacity arrives.
FROM_ZERO_TIMEOUT = 30 * 60.0
FROM_ZERO = "scaling up from zero: usually 8–15 minutes"
LOADING = ("still loading the model (a first request on a new instance fetches and loads the checkpoint, "
           "which can take minutes for a large one): try again in a minute")
POLL_FIRST, POLL_MAX = 0.5, 5.0  # seconds between looks for the answer, growing
INSTANCES_EVERY = 15.0  # seconds between looks at the instance count while waiting
MAX_POLL_ERRORS = 10
INPUT_PREFIX = "inference/input/"
# autoscaling puts an endpoint in Updating while it adds instances; it serves all along
SERVING = ("InService", "Updating", "SystemUpdating")
WHAT_TO_DO = {
    "Creating": "wait until it is InService",
    "Failed": "see its failure reason, delete it and deploy again",
    "OutOfService": "it cannot serve: delete it and deploy again",
    "Deleting": "it is being deleted: choose another endpoint",
    "RollingBack": "wait until it is InService again",
    "UpdateRollbackFailed": "it cannot serve: delete it and deploy again",
}

StateCallback = Callable[[str, str], None]


class Generation(BaseModel):
    endpoint: str
    task: str
    images: List[bytes] = []  # PNGs, each carrying its infotext in the "parameters" text chunk
    parameters: dict = {}
    info: dict = {}
    infotexts: List[str] = []
    seconds: float = 0.0


# -- what the forms offer -------------------------------------------------------------------------------------------
def serving_endpoints(aws: Aws, reconcile: bool = True) -> List[str]:
    """The endpoints that can generate now."""
    return [e.name for e in catalog.list_endpoints(aws, reconcile=reconcile) if e.status in SERVING]


# -- answers and errors ---------------------------------------------------------------------------------------------
def server_error(endpoint: str, body, status: Optional[int] = None) -> UserError:
    """The server's JSON error ({"error", "field"}) as our error: 400 Refused, 404 NotFound, others UserError."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else {"error": text.strip()[:500]}
    message, field = str(doc.get("error") or f"HTTP {status}"), doc.get("field")
    if doc.get("status") == "loading":  # the server answers 503 {"status": "loading"} until its model is loaded
        return UserError(f"Endpoint '{endpoint}' is {LOADING}.")
    if status is None:  # an async failure object carries no status; a field means the request was refused
        status = doc.get("status") if isinstance(doc.get("status"), int) else (400 if field else None)
    if status == 400:
        exc: UserError = Refused(f"Endpoint '{endpoint}' refused the request: {message}")
    elif status == 404:
        exc = NotFound(f"Endpoint '{endpoint}' could not find a model: {message}")
    else:
        exc = UserError(f"Endpoint '{endpoint}' could not generate: {message}")
    exc.field = field  # type: ignore[attr-defined] - the form field to point at, when the server names one
    return exc


def _invoke_error(endpoint: str, exc: BaseException) -> UserError:
    code = error_code(exc)
    response = getattr(exc, "response", {}) or {}
    message = str(response.get("Error", {}).get("Message", "")) or str(exc)
    original = str(response.get("OriginalMessage") or "")
    from_server = original.lstrip().startswith("{")  # the server's JSON error, whatever its words
    if isinstance(exc, bex.ReadTimeoutError) or ("timed out" in (message + original).lower() and not from_server):
        # on a new instance that is mostly the model's download and load, not the generation itself
        return TransferError(f"Endpoint '{endpoint}' did not answer within the 60 seconds AWS gives a real-time "
                             f"request: it is probably {LOADING}. A generation that itself takes longer needs an "
                             f"async endpoint.")
    if code == "ModelError":
        return server_error(endpoint, original or message, int(response.get("OriginalStatusCode") or 0) or None)
    if code == "ModelNotReadyException":
        return UserError(f"Endpoint '{endpoint}' is not ready to generate yet ({message}): it is probably {LOADING}.")
    if is_not_found(exc) or (code == "ValidationError" and "not found" in message.lower()):
        return NotFound(f"Endpoint '{endpoint}' does not exist ({message}).")
    return describe(exc, f"invoking endpoint '{endpoint}'")


def _generation(endpoint: str, task: str, body: bytes, started: float) -> Generation:
    try:
        doc = json.loads(body)
        info = doc.get("info") or {}
        info = json.loads(info) if isinstance(info, str) else info
        images = [base64.b64decode(i.split(",", 1)[1] if i.startswith("data:") else i) for i in doc.get("images") or []]
    except (ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"Endpoint '{endpoint}' answered something that is not the server's answer ({exc}): "
                        f"{body[:200]!r}") from None
    infotexts = [str(t) for t in info.get("infotexts") or []] if isinstance(info, dict) else []
    for i, image in enumerate(images):
        if not image.startswith(b"\x89PNG\r\n\x1a\n"):
            raise UserError(f"Endpoint '{endpoint}' answered image {i + 1} in a format other than PNG.")
        if png_parameters(image) is None and i < len(infotexts):  # keep the infotext with the file, as the WebUI does
            images[i] = with_parameters(image, infotexts[i])
    return Generation(endpoint=endpoint, task=task, images=images, parameters=doc.get("parameters") or {},
                      info=info if isinstance(info, dict) else {}, infotexts=infotexts,
                      seconds=round(time.monotonic() - started, 2))


# -- invocation -----------------------------------------------------------------------------------------------------
def _serving_endpoint(aws: Aws, endpoint: str) -> Tuple[dict, bool]:
    """(describe_endpoint, whether async); NotFound or Refused when it cannot take a request now."""
    raw = catalog._describe_raw(aws, endpoint)
    if raw is None:
        raise NotFound(f"Endpoint '{endpoint}' does not exist: choose another or deploy one.")
    status = raw["EndpointStatus"]
    if status not in SERVING:
        hint = WHAT_TO_DO.get(status, "wait until it is InService")
        raise Refused(f"Endpoint '{endpoint}' is {status}: {hint}.")
    if raw.get("AsyncInferenceConfig"):
        return raw, True
    try:
        config = aws.client("sagemaker").describe_endpoint_config(EndpointConfigName=raw["EndpointConfigName"])
        return raw, bool(config.get("AsyncInferenceConfig"))
    except Exception as exc:
        if not scaling.missing(exc):
            raise describe(exc, f"reading the endpoint config of '{endpoint}'") from exc
    # the config was deleted under the live endpoint: our tag says the type
    return raw, scaling.tags_of(aws, raw["EndpointArn"]).get(scaling.TAG_TYPE) == "async"


def _instances(aws: Aws, endpoint: str) -> Optional[int]:
    try:
        raw = catalog._describe_raw(aws, endpoint) or {}
    except UserError:
        return None  # only for the state shown; the answer is what counts
    return _count(raw)


def _count(raw: dict) -> Optional[int]:
    variant = (raw.get("ProductionVariants") or [{}])[0]
    count = variant.get("CurrentInstanceCount", variant.get("DesiredInstanceCount"))
    return count if isinstance(count, int) else None


def _check_realtime(endpoint: str, data: bytes, width: int, height: int, images: int) -> None:
    if len(data) > REALTIME_LIMIT:
        raise Refused(f"The request is {len(data) / 1e6:.1f} MB; real-time endpoint '{endpoint}' takes at most 6 MB: "
                      f"use a smaller init image or mask, or an async endpoint (up to 1 GB).")
    answer = width * height * images * ANSWER_BYTES_PER_PIXEL
    if answer > REALTIME_LIMIT:
        raise Refused(f"{images} image(s) of {width}x{height} can come back as up to {answer / 1e6:.0f} MB, over the "
                      f"6 MB a real-time endpoint ('{endpoint}') can answer: lower the batch size or the size, "
                      f"or use an async endpoint.")


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} seconds" if seconds < 120 else f"{seconds / 60:.3g} minutes"


def _split(uri: str) -> Tuple[str, str]:
    bucket, key = split_s3_uri(uri)
    if not bucket:
        raise UserError(f"SageMaker gave an answer location that is not in S3: {uri!r}")
    return bucket, key


def _take(s3, uri: str) -> Optional[bytes]:
    """The object's bytes, deleting it (None while it does not exist)."""
    bucket, key = _split(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except Exception as exc:  # the answer is read; a leftover object is harmless
        log.warning("Could not delete %s: %s", uri, exc)
    return body


def _landed(aws: Aws, entry: inflight.Sent) -> bool:
    """A stopped async request's answer or failure is in S3 (and deleted there: nobody reads it)."""
    s3 = aws.client("s3")
    try:
        return any(_take(s3, uri) is not None for uri in (entry.output, entry.failure) if uri)
    except Exception as exc:  # cannot tell: it still counts
        log.warning("Could not look for the answer of a stopped request at %s: %s", entry.output, exc)
        return False


def _waiting(endpoint: str, count: Optional[int], behind: int) -> Optional[Tuple[str, str]]:
    """(state, text) while an async request waits, from the instance count and our requests ahead of it."""
    if count == 0:
        return "scaling up from zero", FROM_ZERO + (f"; then queued behind {behind} earlier request(s) from here"
                                                    if behind else "")
    if behind:  # one request at a time per instance (MaxConcurrentInvocationsPerInstance)
        return "queued", f"queued behind {behind} earlier request(s) from here still running on {endpoint}"
    return ("generating", f"generating on {endpoint}") if count else None


def _wait(aws: Aws, endpoint: str, answer: dict, report: StateCallback, cancel: threading.Event,
          timeout: float, entry: inflight.Sent) -> bytes:
    s3, inference_id = aws.client("s3"), answer.get("InferenceId", "")
    output, failure = answer["OutputLocation"], answer.get("FailureLocation")
    shown: Optional[Tuple[str, str]] = ("queued", f"queued on {endpoint} (inference id {inference_id})")
    report(*shown)
    delay, errors = POLL_FIRST, 0
    deadline, next_look = time.monotonic() + timeout, 0.0
    while True:
        if time.monotonic() >= next_look:
            count, next_look = _instances(aws, endpoint), time.monotonic() + INSTANCES_EVERY
            now = _waiting(endpoint, count, inflight.ahead(entry, lambda e: _landed(aws, e)))
            if now and now != shown:
                shown = now
                report(*now)
        try:
            body = _take(s3, output)
            if body is not None:
                return body
            failed = _take(s3, failure) if failure else None
            if failed is not None:
                raise server_error(endpoint, failed)
            errors = 0
        except (bex.BotoCoreError, bex.ClientError) as exc:
            errors += 1  # throttling or a network blip: look again at the next poll
            problem = describe(exc, f"reading the answer of endpoint '{endpoint}' ({output})")
            if errors >= MAX_POLL_ERRORS or isinstance(problem, ConfigError):
                raise problem from exc
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransferError(f"Endpoint '{endpoint}' gave no answer within {_duration(timeout)} "
                                f"(inference id {inference_id}): it may be scaling up or busy; try again later.")
        if cancel.wait(min(delay, left)):
            raise Interrupted(f"Stopped waiting for endpoint '{endpoint}' (inference id {inference_id}).")
        delay = min(delay * 1.5, POLL_MAX)


def _withdraw(aws: Aws, endpoint: str, key: str, inference_id: str, entry: inflight.Sent) -> Interrupted:
    """Stop: the input is deleted, so that the endpoint cannot run the request if it has not started it (it fails
    when it dequeues it). Whether it had started is known only when no instance was up to start it."""
    entry.stopped = True
    stopped = f"Stopped waiting for endpoint '{endpoint}' (inference id {inference_id})."
    try:
        aws.client("s3").delete_object(Bucket=aws.bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - said in the message
        reason = describe(exc, f"deleting {aws.s3_uri(key)}") if isinstance(exc, bex.ClientError) else exc
        return Interrupted(f"{stopped} Its request could not be withdrawn ({reason}): endpoint '{endpoint}' will "
                           f"still run it, and its answer will be discarded.")
    if _instances(aws, endpoint) == 0:
        entry.takes_turn = False
        return Interrupted(f"Stopped: the request was cancelled before it started (endpoint '{endpoint}' had no "
                           f"instance up yet, and its input is deleted; inference id {inference_id}).")
    return Interrupted(f"{stopped} Its input is deleted: if the endpoint had not started the request, it drops it; "
                       f"if it had, endpoint '{endpoint}' is still finishing the earlier request, and its answer "
                       f"will be discarded.")


def _invoke_async(aws: Aws, endpoint: str, data: bytes, report: StateCallback, cancel: threading.Event,
                  timeout: float) -> bytes:
    inference_id = uuid.uuid4().hex
    key = f"{INPUT_PREFIX}{inference_id}.json"
    s3 = aws.client("s3")
    with translate(f"writing the request to {aws.s3_uri(key)}"):
        s3.put_object(Bucket=aws.bucket, Key=key, Body=data, ContentType=JSON)
    # nobody waits for it after the timeout: let it expire in the queue rather than run for nothing
    ttl = min(max(60, int(timeout)), 21600)
    entry, sent_at = inflight.sent(endpoint), time.monotonic()
    try:
        try:
            answer = aws.client("sagemaker-runtime").invoke_endpoint_async(
                EndpointName=endpoint, InputLocation=aws.s3_uri(key), ContentType=JSON, Accept=JSON,
                InferenceId=inference_id, RequestTTLSeconds=ttl)
        except (bex.BotoCoreError, bex.ClientError) as exc:
            raise _invoke_error(endpoint, exc) from exc
        entry.output, entry.failure = answer["OutputLocation"], answer.get("FailureLocation")
        try:
            return _wait(aws, endpoint, answer, report, cancel, timeout, entry)
        except Interrupted:
            entry.until = sent_at + ttl + inflight.ASYNC_RUN_LIMIT
            raise _withdraw(aws, endpoint, key, inference_id, entry) from None
    finally:
        if not entry.stopped:
            inflight.over(entry)
            try:  # read by now, or no longer wanted
                s3.delete_object(Bucket=aws.bucket, Key=key)
            except Exception as exc:
                log.warning("Could not delete %s: %s", aws.s3_uri(key), exc)


def _invoke_realtime(aws: Aws, endpoint: str, data: bytes, report: StateCallback, cancel: threading.Event) -> bytes:
    """The call runs in a thread of its own: a Stop returns at once, while the endpoint finishes it unread."""
    entry = inflight.sent(endpoint)
    behind = inflight.ahead(entry, lambda e: _landed(aws, e))
    report("generating", f"generating on {endpoint}" +
           (f" (it is still finishing {behind} earlier request(s) from here)" if behind else ""))
    box: dict = {}

    def call() -> None:
        try:
            box["body"] = aws.client("sagemaker-runtime").invoke_endpoint(
                EndpointName=endpoint, Body=data, ContentType=JSON, Accept=JSON)["Body"].read()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc
        finally:
            inflight.over(entry)

    worker = threading.Thread(target=call, name="sagemaker-realtime", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        if worker.is_alive() and cancel.is_set():
            entry.stopped = True
            raise Interrupted(f"Stopped waiting for endpoint '{endpoint}'. A real-time request cannot be "
                              f"withdrawn: endpoint '{endpoint}' is still finishing it, and its answer will be "
                              f"discarded.")
    error = box.get("error")
    if isinstance(error, (bex.BotoCoreError, bex.ClientError)):
        raise _invoke_error(endpoint, error) from error
    if error is not None:
        raise error
    return box["body"]


def invoke(aws: Aws, endpoint: str, task: str, payload: dict, models: dict, *,
           on_state: Optional[StateCallback] = None, cancel: Optional[threading.Event] = None,
           timeout: float = ASYNC_TIMEOUT) -> Generation:
    """One generation on the endpoint: the WebUI API payload with the models from resolve_models.

    States go to on_state(state, message): queued, scaling up from zero, generating, done; the text says when
    requests sent from here before are still ahead of it on the endpoint. When cancel is set it stops with
    Interrupted saying what becomes of the request (an async one is withdrawn if it has not started), and with
    TransferError after timeout seconds (at least FROM_ZERO_TIMEOUT when the endpoint is at 0 instances)."""
    started = time.monotonic()
    report = on_state or (lambda state, message: None)
    raw, is_async = _serving_endpoint(aws, endpoint)
    if is_async and _count(raw) == 0:
        timeout = max(timeout, FROM_ZERO_TIMEOUT)
    body = {"task": task, "payload": payload, "models": models}
    try:  # the server's own checks, before an upload, a queue or a scale-up
        req = parse_request(body)
    except BadRequest as exc:
        raise Refused(f"Endpoint '{endpoint}' would refuse the request: {exc}") from None
    data = json.dumps(body).encode("utf-8")
    if is_async:
        answer = _invoke_async(aws, endpoint, data, report, cancel or threading.Event(), timeout)
    else:
        _check_realtime(endpoint, data, req.width, req.height, req.batch_size * req.n_iter)
        answer = _invoke_realtime(aws, endpoint, data, report, cancel or threading.Event())
    generation = _generation(endpoint, task, answer, started)
    report("done", f"{len(generation.images)} image(s) in {generation.seconds:.1f} s")
    return generation
