"""The entry of AWS's prebuilt PyTorch inference container: shipped as code/inference.py in the model's code package.

SageMaker's PyTorch inference toolkit (TorchServe underneath) imports this file as the module `inference` from
/opt/ml/model/code, where the package `aws_extension` lies beside it, and calls:

- model_fn(model_dir) once per worker: our Handler, once its engine has started and any preload checkpoint is loaded;
- input_fn(body, content_type) -> (bytes, content type); the toolkit hands JSON over as str, others as bytearray;
- predict_fn(data, handler) -> (status, answer dict), from Handler.invoke: the same handler as our own HTTP server;
- output_fn(prediction, accept, context) -> (JSON bytes, "application/json"), whatever the Accept header asks.

A status other than 200 goes back as that HTTP status with the JSON answer as the body: output_fn sets it on the
toolkit's request context (which is how the toolkit itself reports its errors). Should no context come, it raises
InvocationError, which the toolkit maps to the same status, with a body of the JSON answer followed by a newline
and a Python traceback.

/ping is answered by TorchServe itself, not by Handler.ping: healthy while its worker runs, even while model_fn
is still loading (requests then wait in TorchServe's queue), and it restarts a failed worker again and again. So a
server that cannot work at all (no usable GPU on a GPU instance, a preload checkpoint that does not load) stops
TorchServe: /ping then fails and SageMaker fails the deploy, or replaces the instance, rather than bill for a
server that never answers.

Absolute imports only (this file runs outside its package), and nothing heavy at import: torch and diffusers are
imported by the handler's engine, in the background.
"""

from __future__ import annotations

import atexit
import http
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Optional, Tuple

JSON = "application/json"
CLOSE_SECONDS = 20.0  # at interpreter exit, in-flight generations get this long
LOG_RELAY_SECONDS = 2.0

log = logging.getLogger("sd-webui-sagemaker.toolkit")

_HERE = os.path.dirname(os.path.abspath(__file__))
# In the container this file is code/inference.py and the package sits beside it in code/.
if os.path.isfile(os.path.join(_HERE, "aws_extension", "__init__.py")) and _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:  # the toolkit maps its own error class to the response status
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ToolkitError
except ImportError:  # outside the container: the same shape, so behaviour and tests do not depend on the toolkit
    class _ToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: Optional[str] = None, phrase: Optional[str] = None):
            self.status_code = status_code
            self.message = message or "Invalid Request"
            self.phrase = phrase or self.message
            super().__init__(status_code, self.message, self.phrase)


class InvocationError(_ToolkitError):
    """A handler answer other than 200, raised for a toolkit that gives output_fn no request context."""

    def __init__(self, status: int, answer: dict):
        self.answer = answer
        super().__init__(status, json.dumps(answer), phrase(status))


def phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def model_fn(model_dir: str) -> Any:
    """The request handler (the toolkit calls it the model), once its engine has started and any preload is done;
    when it cannot work, TorchServe is stopped with the reason in the log (see above)."""
    from aws_extension.serve.handler import Handler

    handler = Handler.from_environment()
    atexit.register(_close, handler)
    try:
        handler.wait_healthy()
    except Exception as exc:
        log.error("%s Stopping the model server: this container cannot serve.", exc)
        time.sleep(LOG_RELAY_SECONDS)  # TorchServe relays the worker's output: let the reason reach the log first
        stop_model_server()
        raise
    return handler


def stop_model_server() -> bool:
    """SIGTERM to the TorchServe frontend that started this worker; False if the parent is something else."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            if b"org.pytorch.serve.ModelServer" not in f.read():
                return False
        os.kill(parent, signal.SIGTERM)
        return True
    except OSError:
        return False


def _close(handler: Any) -> None:
    try:
        handler.close(CLOSE_SECONDS)
    except Exception:  # exiting anyway
        log.exception("closing the handler")


def input_fn(request_body: Any, request_content_type: Optional[str]) -> Tuple[bytes, str]:
    """The raw body as bytes and its content type; the handler checks both (one place for every entry point)."""
    if request_body is None:
        body = b""
    elif isinstance(request_body, str):
        body = request_body.encode("utf-8")
    else:
        body = bytes(request_body)  # bytes, bytearray, memoryview
    return body, (request_content_type or "").strip() or JSON


def predict_fn(input_data: Tuple[bytes, str], model: Any) -> Tuple[int, dict]:
    """(status, answer) from the handler; an unexpected exception becomes a 500 answer, never a worker crash."""
    body, content_type = input_data
    try:
        status, answer = model.invoke(body, content_type)
    except Exception as exc:
        log.exception("the handler failed")
        return 500, {"error": f"The inference server failed: {exc}"}
    return int(status), answer


def output_fn(prediction: Tuple[int, dict], accept: Optional[str], context: Any = None) -> Tuple[bytes, str]:
    """The answer as JSON (the only format the server speaks, whatever Accept says), with its HTTP status."""
    status, answer = prediction
    if status != 200:
        if context is None or not hasattr(context, "set_response_status"):
            raise InvocationError(status, answer)
        context.set_response_status(code=status, phrase=phrase(status))
    return json.dumps(answer).encode("utf-8"), JSON
