"""HTTP routes the browser needs beside gradio's: the uploader's presigning, and our scripts when standalone.

Routes added to the app after launch are outside gradio's login, so each one checks it itself: when the
app has auth, a request must carry a session cookie gradio issued (`access-token…`).

The uploader's routes (`POST /sagemaker/uploads/<step>`, used by javascript/sagemaker_uploader.js) only start,
sign, list, complete and abort multipart uploads: the model's bytes go from the browser straight to S3.
Bodies are plain JSON objects read by hand (FastAPI 0.94 cannot take pydantic v1 models as bodies when
pydantic 2 is installed, as on Forge). A refusal answers `{"error": "<sentence>"}` with 400 (404 when the
upload or model is gone); nothing answers a traceback, and no presigned URL is ever logged.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Callable, Optional

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ..core.errors import NotFound, Refused, UserError
from .context import TabContext, log

SCRIPTS = Path(__file__).resolve().parents[2] / "javascript"
PREFIX = "/sagemaker"


def logged_in(app, request: Request) -> bool:
    if not getattr(app, "auth", None):
        return True
    tokens = getattr(app, "tokens", {}) or {}
    return any(name.startswith("access-token") and value in tokens for name, value in request.cookies.items())


def require_login(app, request: Request) -> None:
    if not logged_in(app, request):
        raise HTTPException(status_code=401, detail="Not authenticated: log in to the WebUI first.")


# -- the uploader's steps (plain functions of the core session and the request's JSON object) -------------
def _field(body: dict, name: str, kind: type, required: bool = True):
    value = body.get(name)
    if value is None and not required:
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        what = {str: "a text", int: "a whole number", list: "a list"}[kind]
        raise Refused(f"'{name}' must be {what}, not {value!r}." if name in body else f"'{name}' is missing.")
    return value


def _head(body: dict) -> Optional[bytes]:
    """The file's first bytes, base64 in "head" (the page reads them so the type is checked before any part)."""
    text = _field(body, "head", str, required=False)
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused("'head' must be the file's first bytes in base64.") from None


def start_step(aws, body: dict) -> dict:
    from ..core.models.browser import start_upload

    return start_upload(aws, _field(body, "type", str), _field(body, "name", str), _field(body, "size", int),
                        sha256=_field(body, "sha256", str, required=False) or None, head=_head(body),
                        force=body.get("force") is True).dict()


def sign_step(aws, body: dict) -> dict:
    from ..core.models.browser import presign_part

    return presign_part(aws, _field(body, "key", str), _field(body, "upload_id", str),
                        _field(body, "part_number", int), _field(body, "checksum_crc32", str))


def parts_step(aws, body: dict) -> dict:
    from ..core.models.browser import list_parts

    return {"parts": [p.dict() for p in list_parts(aws, _field(body, "key", str), _field(body, "upload_id", str))]}


def complete_step(aws, body: dict) -> dict:
    from ..core.models.browser import complete_upload

    return complete_upload(aws, _field(body, "key", str), _field(body, "upload_id", str), _field(body, "parts", list),
                           _field(body, "sha256", str), _field(body, "size", int),
                           kind=_field(body, "kind", str, required=False),
                           base=_field(body, "base", str, required=False)).dict()


def abort_step(aws, body: dict) -> dict:
    from ..core.models.browser import abort_upload

    abort_upload(aws, _field(body, "key", str), _field(body, "upload_id", str))
    return {"aborted": True}


STEPS = {"start": start_step, "sign": sign_step, "parts": parts_step, "complete": complete_step, "abort": abort_step}


def error_response(exc: BaseException, step: str) -> JSONResponse:
    if isinstance(exc, UserError):
        return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, NotFound) else 400)
    # Unexpected: the console gets the traceback (no URL is in it: signing happens inside the core), the page a line.
    log.exception("Amazon SageMaker uploader: unexpected failure in '%s'", step)
    return JSONResponse({"error": f"unexpected {type(exc).__name__} while '{step}' (details in the WebUI's console)."},
                        status_code=500)


def add_routes(app, ctx: TabContext) -> None:
    @app.get(PREFIX + "/static/{name}")
    def script(name: str, request: Request):
        require_login(app, request)
        path = SCRIPTS / name
        if "/" in name or not name.endswith(".js") or not path.is_file():
            raise HTTPException(status_code=404, detail="No such script.")
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    def route(step: str, fn: Callable[[object, dict], dict]) -> None:
        async def handler(request: Request):
            require_login(app, request)
            try:
                body: Optional[dict] = await request.json()
            except Exception:  # noqa: BLE001 - any unreadable body is the caller's mistake
                body = None
            if not isinstance(body, dict):
                return JSONResponse({"error": "The request body must be a JSON object."}, status_code=400)
            try:  # boto3 blocks: keep it off the event loop
                return JSONResponse(await run_in_threadpool(lambda: fn(ctx.aws(), body)))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence for the page
                return error_response(exc, step)

        handler.__name__ = f"sagemaker_upload_{step}"
        app.add_api_route(f"{PREFIX}/uploads/{step}", handler, methods=["POST"], include_in_schema=False)

    for step, fn in STEPS.items():
        route(step, fn)
