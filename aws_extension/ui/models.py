"""Cloud Models Management: from WebUI, from Laptop, from URL, and the models already in the cloud."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from ..core.models.catalog import delete_model, list_models, show_model
from ..core.models.detect import AUTO, AUTO_LABEL, KIND_NAMES, describe
from ..core.models.types import MODEL_TYPES, model_type
from ..core.models.uploads import upload_paths
from ..core.models.urls import upload_urls
from ..core.text import size_text
from .context import (NOT_DELETED, TabContext, choice_update, confirm_delete, handled, js, message,
                      progress_lines, result_lines, run_with_progress)
from .sync import sync_all

LABELS = [t.label for t in MODEL_TYPES]
UPLOAD_LABELS = [AUTO_LABEL] + LABELS  # Auto: each file's header says its type
FORCE = "Upload even if the type does not match"
ALL = "All"
LAPTOP_PICKER = """
<div id="sagemaker-laptop">
  <input type="file" multiple id="sagemaker-laptop-files">
  <div id="sagemaker-laptop-progress"></div>
</div>
"""


def split_paths(text: str) -> list:
    """One path per line, or several separated by commas."""
    return [p.strip() for line in (text or "").splitlines() for p in line.split(",") if p.strip()]


def folders_text(folders: list) -> str:
    """The folders 'from WebUI' takes paths from, as its refusals name them (resolved)."""
    if not folders:
        return "(none: no model folders are configured, so no path can be uploaded from this machine)"
    return "\n".join(f"- `{Path(f).expanduser().resolve()}`" for f in folders)


def from_webui(ctx: TabContext) -> tuple:
    # said before any upload, not only in a refusal; the folders are read as the page opens (settings can change)
    gr.Markdown("Paths may come only from these model folders (a bare file name is looked up in them):")
    folders = gr.Markdown(elem_id="sagemaker-webui-folders")
    kinds = [AUTO] + [t.id for t in MODEL_TYPES]
    boxes = [gr.Textbox(label=label, lines=2, placeholder="one path per line", elem_id=f"sagemaker-path-{kind}")
             for kind, label in zip(kinds, UPLOAD_LABELS)]
    force = gr.Checkbox(False, label=FORCE, elem_id="sagemaker-webui-force")
    button = gr.Button("Upload Models to Cloud", variant="primary", elem_id="sagemaker-webui-upload")
    output = gr.Textbox(label="Upload result", lines=4, interactive=False, elem_id="sagemaker-webui-result")

    def upload(*values):
        texts, forced = values[:-1], bool(values[-1])
        jobs = [(kind, split_paths(text)) for kind, text in zip(kinds, texts) if split_paths(text)]
        if not jobs:
            yield "Type the path of at least one model file."
            return
        folders = ctx.model_folders()
        if not folders:
            yield "Error: no model folders are configured, so no path can be uploaded from this machine."
            return

        def work(progress, cancel):
            aws = ctx.aws()
            return [r for kind, paths in jobs for r in upload_paths(aws, kind, paths, folders, progress, cancel, forced)]

        yield from run_with_progress(work, progress_lines(), result_lines)

    return button.click(upload, boxes + [force], output), (lambda: folders_text(ctx.model_folders()), None, folders)


def from_laptop() -> None:
    kind = gr.Dropdown(UPLOAD_LABELS, value=AUTO_LABEL, label="Model type", elem_id="sagemaker-laptop-type")
    gr.HTML(LAPTOP_PICKER)
    force = gr.Checkbox(False, label=FORCE, elem_id="sagemaker-laptop-force")
    button = gr.Button("Upload Models to Cloud", variant="primary", elem_id="sagemaker-laptop-upload")
    # The browser sends the bytes straight to S3 (javascript/sagemaker_uploader.js); the server only presigns.
    # the browser code returns nothing: the event has no outputs, and a value for one makes gradio's page fail
    button.click(None, [kind, force], None,
                 **js("(kind, force) => { sagemakerUploadFromLaptop(kind, force); return []; }"))


def from_url(ctx: TabContext) -> None:
    kind = gr.Dropdown(UPLOAD_LABELS, value=AUTO_LABEL, label="Model type", elem_id="sagemaker-url-type")
    urls = gr.Textbox(label="URL list (Comma-separated in English)", lines=2, elem_id="sagemaker-url-list")
    description = gr.Textbox(label="Models Description (Optional)", lines=2, placeholder='{"author": "..."}',
                             elem_id="sagemaker-url-description")
    force = gr.Checkbox(False, label=FORCE, elem_id="sagemaker-url-force")
    button = gr.Button("Upload Models to Cloud", variant="primary", elem_id="sagemaker-url-upload")
    output = gr.Textbox(label="URL upload result", lines=4, interactive=False, elem_id="sagemaker-url-result")

    def upload(kind_label, url_text, description_text, forced):
        def work(progress, cancel):
            aws = ctx.aws()
            kind = AUTO if kind_label == AUTO_LABEL else model_type(kind_label).id
            return upload_urls(aws, kind, url_text, description_text or None, progress=progress, cancel=cancel,
                               force=bool(forced))

        yield from run_with_progress(work, progress_lines(), result_lines)

    return button.click(upload, [kind, urls, description, force], output)


def model_choice(m) -> str:
    return f"{m.name} ({model_type(m.type).label}, {size_text(m.size)}, {m.last_modified})"


def cloud_models(ctx: TabContext) -> None:
    with gr.Row():
        kind = gr.Dropdown([ALL] + LABELS, value=ALL, label="Model type", elem_id="sagemaker-cloud-type")
        models = gr.Dropdown([], label="Models in the cloud", elem_id="sagemaker-cloud-models")
        refresh = gr.Button("Refresh", elem_id="sagemaker-cloud-refresh", scale=0)
    details = gr.Textbox(label="Model details", lines=4, interactive=False, elem_id="sagemaker-cloud-details")
    delete = gr.Button("Delete", variant="stop", elem_id="sagemaker-cloud-delete")
    found: dict = {}

    def listing(kind_label, keep=None):
        try:
            listed = list_models(ctx.aws(), None if kind_label == ALL else model_type(kind_label).id)
        except Exception as exc:  # noqa: BLE001
            return choice_update([]), message(exc)
        found.clear()
        found.update({model_choice(m): m for m in listed})
        choices = list(found)
        return choice_update(choices, keep, first=False), \
            f"{len(choices)} model(s) in the cloud." if choices else "No models yet."

    @handled
    def show(choice):
        if not choice or choice not in found:  # nothing chosen (an empty list, or after Delete): keep the message
            return gr.update()
        m = found[choice]
        full = show_model(ctx.aws(), m.type, m.name)
        description = json.dumps(full.description, ensure_ascii=False) if full.description else "(none)"
        kind = f"\nkind: {describe(full.kind, full.base or 'unknown').what}" if full.kind in KIND_NAMES else ""
        return (f"s3://{ctx.aws().bucket}/{full.key}\nsize: {full.size} bytes · uploaded {full.last_modified}\n"
                f"sha256: {full.sha256 or '(no record)'}{kind}\ndescription: {description}")

    def remove(choice, kind_label):
        if choice == "":
            return gr.update(), NOT_DELETED
        if not choice or choice not in found:
            return gr.update(), "Choose a model first."
        m = found[choice]
        try:
            delete_model(ctx.aws(), m.type, m.name)
        except Exception as exc:  # noqa: BLE001
            return gr.update(), message(exc)
        found.pop(choice, None)
        listing(kind_label)  # refreshes `found`; if that fails, the list is still right less this model
        # nothing chosen afterwards: the confirmation stays visible, and a second click deletes nothing else
        return gr.update(choices=list(found), value=None), f"Deleted {m.name}."

    refresh.click(listing, [kind], [models, details])
    kind.change(listing, [kind], [models, details])
    models.change(show, [models], details)
    delete.click(remove, [models, kind], [models, details],
                 **confirm_delete("Delete {} from the cloud, with its record?"))
    return listing, [kind], [models, details]


def build(ctx: TabContext) -> list:
    """The section; returns its loaders (fn, inputs, outputs), run when the page opens."""
    gr.Markdown("### Cloud Models Management")
    with gr.Tabs():
        with gr.Tab("from WebUI", elem_id="sagemaker-tab-webui"):
            webui_done, folders_loader = from_webui(ctx)
            sync_done = sync_all(ctx)
        with gr.Tab("from Laptop", elem_id="sagemaker-tab-laptop"):
            from_laptop()
        with gr.Tab("from URL", elem_id="sagemaker-tab-url"):
            url_done = from_url(ctx)
        with gr.Tab("Models in the Cloud", elem_id="sagemaker-tab-cloud"):
            loader = cloud_models(ctx)
    for done in (webui_done, sync_done, url_done):  # the cloud's list shows what was just uploaded
        done.then(*loader)
    return [folders_loader, loader]
