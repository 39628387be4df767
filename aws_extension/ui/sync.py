"""Sync all, in "from WebUI": every model file of the model folders that the cloud lacks, with one progress line."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import gradio as gr

from ..core.models.localmodels import SyncFolder, SyncItem, folders_from_dirs, standalone_cache
from ..core.models.sync import item_line, progress_text, summary, sync_models
from ..core.models.types import model_type
from ..core.text import Pace
from .context import TabContext, run_with_progress


def sync_plan(ctx: TabContext) -> Tuple[List[SyncFolder], List[SyncItem], object]:
    """The folders to walk, the folders refused, and the hash cache: the WebUI's per type and its own cache when the
    host gives them, else the model folders as the CLI reads --models-dir."""
    if ctx.sync_folders is not None:
        folders = [SyncFolder(model_type(t), Path(f)) for t, f in ctx.sync_folders()]
        failures: List[SyncItem] = []
    else:
        folders, failures = folders_from_dirs(ctx.model_folders())
    cache = ctx.hash_cache() if ctx.hash_cache is not None else standalone_cache(ctx.model_folders())
    return folders, failures, cache


def result_text(items: List[SyncItem], dry_run: bool, aws) -> str:
    """Failures and what went (or would go) up, one line each; a dry run lists what is there too; then the counts."""
    lines = [item_line(i, aws) for i in items if not i.ok or dry_run or i.status != "skipped"]
    return "\n".join(lines + [summary(items, dry_run)])


def sync_all(ctx: TabContext):
    gr.Markdown("Sync all uploads every model file in these folders and their subfolders that the cloud does not "
                "have yet (the same sha256); the others are skipped without sending a byte.")
    with gr.Row():
        dry_run = gr.Checkbox(label="Only list what would be uploaded (dry run)", value=False,
                              elem_id="sagemaker-sync-dry-run")
        button = gr.Button("Sync all", elem_id="sagemaker-sync-all")
    output = gr.Textbox(label="Sync result", lines=4, interactive=False, elem_id="sagemaker-sync-result")

    def sync(dry):
        if not ctx.model_folders() and ctx.sync_folders is None:
            yield "Error: no model folders are configured, so there is nothing to sync."
            return
        pace = Pace()

        def work(progress, cancel):
            aws = ctx.aws()
            folders, failures, cache = sync_plan(ctx)
            return aws, failures + sync_models(aws, folders, dry_run=bool(dry), cache=cache, progress=progress,
                                               cancel=cancel)

        yield from run_with_progress(work, lambda state: progress_text(state["sync"], pace),
                                     lambda done: result_text(done[1], bool(dry), done[0]))

    return button.click(sync, [dry_run], output)
