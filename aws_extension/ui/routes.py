"""HTTP routes the browser needs beside gradio's: the uploader's presigning, and our scripts when standalone.

Routes added to the app after launch are outside gradio's login, so each one checks it itself: when the
app has auth, a request must carry a session cookie gradio issued (`access-token…`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse

from .context import TabContext

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


def add_routes(app, ctx: TabContext) -> None:
    @app.get(PREFIX + "/static/{name}")
    def script(name: str, request: Request):
        require_login(app, request)
        path = SCRIPTS / name
        if "/" in name or not name.endswith(".js") or not path.is_file():
            raise HTTPException(status_code=404, detail="No such script.")
        return FileResponse(path, media_type="text/javascript")
