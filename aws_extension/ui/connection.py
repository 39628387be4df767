"""The line at the top: which account, region and bucket the tab works on, and the Set up button."""

from __future__ import annotations

import gradio as gr

from ..core.aws import error_code, translate
from ..core.bootstrap import setup
from .context import TabContext, handled, message


def status_line(ctx: TabContext) -> str:
    try:
        aws = ctx.aws()
        account, region, bucket = aws.account_id, aws.region, aws.bucket
        try:
            with translate(f"reading bucket {bucket}"):
                aws.client("s3").head_bucket(Bucket=bucket)
            state = "ready"
        except Exception as exc:  # noqa: BLE001
            if error_code(getattr(exc, "__cause__", None) or exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            state = "missing: click Set up to create it"
        return f"Account {account} · region {region} · bucket {bucket} ({state})"
    except Exception as exc:  # noqa: BLE001
        return f"Not connected. {message(exc)}"


def build(ctx: TabContext) -> gr.Markdown:
    with gr.Row():
        # filled on page load (tab.py), not while the WebUI builds its UI: AWS may be slow or unreachable
        line = gr.Markdown("Connecting to AWS…", elem_id="sagemaker-connection")
        refresh = gr.Button("Refresh", elem_id="sagemaker-connection-refresh", scale=0)
        set_up = gr.Button("Set up", elem_id="sagemaker-setup", scale=0)

    @handled
    def run_setup() -> str:
        result = setup(ctx.aws())
        done = "created" if result.bucket_created else "checked"
        return f"Bucket {result.bucket} {done}: CORS and lifecycle set. " + status_line(ctx)

    refresh.click(lambda: status_line(ctx), None, line)
    set_up.click(run_setup, None, line)
    return line
