"""Browser-test support: the standalone tab in this process on a free loopback port, and Debian's Chromium."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator, List, Optional

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def standalone(models_dirs: Optional[List[str]] = None, auth: Optional[tuple] = None,
               allow_private_urls: bool = True) -> Iterator[str]:
    """The tab as `python -m aws_extension ui` serves it; settings are read from the environment on each click."""
    from aws_extension.core.config import Settings
    from aws_extension.ui.context import TabContext
    from aws_extension.ui.routes import add_routes
    from aws_extension.ui.standalone import build_app, launch

    folders = list(models_dirs or [])
    ctx = TabContext(settings=lambda: Settings.resolve(allow_private_urls=allow_private_urls),
                     model_folders=lambda: folders)
    demo = build_app(ctx)
    app, url = launch(demo, "127.0.0.1", free_port(), auth)
    add_routes(app, ctx)
    try:
        yield url
    finally:
        # gradio 3.41 can wait forever on a click still queued at close: never let that hang the suite
        closer = threading.Thread(target=demo.close, daemon=True)
        closer.start()
        closer.join(30)


@pytest.fixture(scope="session")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 2400})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


@pytest.fixture
def tab(aws, tmp_path, page, monkeypatch):
    """The standalone tab on the emulator (bucket set up), model folder tmp_path/models, opened in Chromium; its
    endpoint lists follow endpoints in transition every half second."""
    monkeypatch.setattr("aws_extension.ui.endpoints.WATCH_SECONDS", 0.5)
    models = tmp_path / "models"
    models.mkdir()
    with standalone([str(models)]) as url:
        page.goto(url)
        page.wait_for_selector("#sagemaker-connection")
        yield page
