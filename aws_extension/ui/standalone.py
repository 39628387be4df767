"""`python -m aws_extension ui`: the same tab without the WebUI, optionally on the embedded emulator."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import List, Optional

from ..core.config import Settings
from .context import TabContext, js, log

ROOT = Path(__file__).resolve().parents[2]
# The WebUI injects javascript/*.js itself; standalone, the page loads them from our route once.
LOADER = """() => {
  if (window.sagemakerScriptsLoaded) return [];
  window.sagemakerScriptsLoaded = true;
  for (const name of %s) {
    const s = document.createElement('script');
    s.src = 'sagemaker/static/' + name;
    document.head.appendChild(s);
  }
  return [];
}"""


def script_names() -> List[str]:
    return sorted(p.name for p in (ROOT / "javascript").glob("*.js"))


def reconcile_in_background(ctx: TabContext) -> None:
    """Autoscaling wanted by endpoints that became InService while nothing was running."""
    def run():
        try:
            from ..core.endpoints import reconcile

            reconcile(ctx.aws())
        except Exception as exc:  # noqa: BLE001 - start-up must not fail on it; listing retries
            log.warning("Amazon SageMaker: applying pending autoscaling at start-up: %s", exc)

    threading.Thread(target=run, name="sagemaker-reconcile", daemon=True).start()


def build_app(ctx: TabContext):
    import gradio as gr

    from .tab import build_tab

    tab = build_tab(ctx, standalone=True)
    with gr.Blocks(title="Amazon SageMaker", analytics_enabled=False) as demo:
        tab.render()
        demo.load(None, None, None, **js(LOADER % script_names()))
    return demo


def launch(demo, host: str, port: int, auth=None):
    """Serve the Blocks without blocking: (FastAPI app, URL). No public API: the queue's api_open decides both the
    REST routes and the footer's "Use via API" link."""
    # several jobs at once: a generation waiting for an endpoint to scale up, or a page following an endpoint that
    # is Creating (it sleeps between looks, holding no thread), must not hold every other click
    try:
        demo.queue(concurrency_count=8, api_open=False)  # gradio 3.x
    except TypeError:
        demo.queue(default_concurrency_limit=8, api_open=False)  # gradio 4.x
    app, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, auth=auth,
                              show_api=False, quiet=True)
    return app, url


def serve(host: str = "127.0.0.1", port: int = 7861, models_dirs: Optional[List[str]] = None,
          allow_private_urls: bool = False, local: bool = False, settings: Optional[dict] = None,
          auth: Optional[tuple] = None, block: bool = True):
    """Start the tab; returns (demo, url). With local=True the emulator runs in this process."""
    emulator = None
    if local:
        from ..core.bootstrap import setup
        from ..local.emulator import LocalEmulator

        emulator = LocalEmulator(runtime=True).start()  # endpoints run the local inference server
        os.environ.update(emulator.env())
        allow_private_urls = True  # the emulator and test servers live on loopback
    resolved = Settings.resolve(settings or {}, allow_private_urls=allow_private_urls)
    folders = [str(Path(d).expanduser().resolve()) for d in (models_dirs or [])]
    ctx = TabContext(settings=lambda: resolved, model_folders=lambda: folders)
    if local:
        setup(ctx.aws(), create_role=True)
    from .routes import add_routes

    demo = build_app(ctx)
    app, url = launch(demo, host, port, auth)
    add_routes(app, ctx)
    reconcile_in_background(ctx)
    logging.getLogger(__name__).info("Amazon SageMaker tab on %s", url)
    print(f"Amazon SageMaker tab: {url}" + (" (local AWS emulator)" if emulator else ""), flush=True)
    if block:
        try:
            demo.block_thread()
        finally:
            if emulator:
                emulator.stop()
    return demo, url
