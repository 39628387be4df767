"""AWS Dataset Management: create a dataset from images (and captions), browse and delete datasets."""

from __future__ import annotations

import io

import gradio as gr

from ..core.datasets import create_dataset, delete_dataset, list_datasets, read_file, show_dataset
from ..core.text import count_text, size_text
from .context import NOT_DELETED, TabContext, choice_update, confirm_delete, handled, message

PREVIEW_IMAGES = 12


def file_paths(files) -> list:
    """gradio 3 gives temp-file wrappers, gradio 4 plain paths."""
    return [getattr(f, "name", f) for f in (files or [])]


def create(ctx: TabContext) -> None:
    files = gr.File(label="Images (and .txt/.caption captions)", file_count="multiple", elem_id="sagemaker-dataset-files")
    name = gr.Textbox(label="Dataset Name", elem_id="sagemaker-dataset-name")
    description = gr.Textbox(label="Dataset Description", lines=2, elem_id="sagemaker-dataset-description")
    button = gr.Button("Create Dataset", variant="primary", elem_id="sagemaker-dataset-create")
    output = gr.Textbox(label="Dataset result", interactive=False, elem_id="sagemaker-dataset-result")

    @handled
    def run(files, name, description):
        paths = file_paths(files)
        dataset = create_dataset(ctx.aws(), (name or "").strip(), paths, description or "")
        return f"Complete Dataset {dataset.name} creation"

    return button.click(run, [files, name, description], output)


CAPTION_CHARS = 200  # of each caption, under its image


def preview(ctx: TabContext, dataset) -> list:
    """The first images with their captions (what a trainer reads beside them), fetched here so that no presigned
    URL reaches the page."""
    from PIL import Image

    aws = ctx.aws()
    captions = {f.name.rsplit(".", 1)[0]: f.name for f in dataset.files if f.kind == "caption"}
    shown = []
    for f in [f for f in dataset.files if f.kind == "image"][:PREVIEW_IMAGES]:
        caption = captions.get(f.name.rsplit(".", 1)[0])
        text = read_file(aws, dataset.name, caption).decode("utf-8", "replace").strip() if caption else ""
        shown.append((Image.open(io.BytesIO(read_file(aws, dataset.name, f.name))),
                      f"{f.name}: {text[:CAPTION_CHARS]}" if text else f"{f.name} (no caption)"))
    return shown


def browse(ctx: TabContext) -> None:
    with gr.Row():
        datasets = gr.Dropdown([], label="Dataset From Cloud", elem_id="sagemaker-datasets")
        refresh = gr.Button("Refresh", elem_id="sagemaker-datasets-refresh", scale=0)
    location = gr.Textbox(label="dataset s3 location", interactive=False, elem_id="sagemaker-dataset-location")
    about = gr.Textbox(label="Dataset Description", interactive=False, elem_id="sagemaker-dataset-about")
    # scale-down: a 64x64 training image is shown at its size, not blown up to fill the cell
    gallery = gr.Gallery(label="Preview", object_fit="scale-down", elem_id="sagemaker-dataset-preview")
    delete = gr.Button("Delete", variant="stop", elem_id="sagemaker-dataset-delete")

    def listing():
        try:
            names = [d.name for d in list_datasets(ctx.aws())]
        except Exception as exc:  # noqa: BLE001
            return choice_update([]), message(exc)
        return choice_update(names, first=False), f"{len(names)} dataset(s)." if names else "No datasets yet."

    def show(name):
        if not name:  # nothing chosen (an empty list, or after Delete): keep the message that said why
            return "", gr.update(), []
        try:
            dataset = show_dataset(ctx.aws(), name)
            files = (f"{count_text(dataset.image_count, 'image')}, {count_text(dataset.caption_count, 'caption')}, "
                     f"{size_text(dataset.total_size)}")
            return dataset.s3_uri, f"{dataset.description}\n({files}, created {dataset.created})".strip(), \
                preview(ctx, dataset)
        except Exception as exc:  # noqa: BLE001
            return "", message(exc), []

    def remove(name):
        if name == "":
            return gr.update(), NOT_DELETED
        if not name:
            return gr.update(), "Choose a dataset first."
        try:
            delete_dataset(ctx.aws(), name)
        except Exception as exc:  # noqa: BLE001
            return gr.update(), message(exc)
        done = f"Deleted dataset {name}."
        try:
            names = [d.name for d in list_datasets(ctx.aws())]
        except Exception as exc:  # noqa: BLE001
            return gr.update(), f"{done} {message(exc)}"
        # nothing chosen afterwards: the confirmation stays visible, and a second click deletes nothing else
        return gr.update(choices=names, value=None), done

    refresh.click(listing, None, [datasets, about])
    datasets.change(show, datasets, [location, about, gallery])
    delete.click(remove, datasets, [datasets, about], **confirm_delete("Delete dataset {} and all its files?"))
    return listing, None, [datasets, about]


def build(ctx: TabContext) -> list:
    """The section; returns its list's loader (fn, inputs, outputs), run when the page opens and after a creation."""
    gr.Markdown("### AWS Dataset Management")
    with gr.Tabs():
        with gr.Tab("Create", elem_id="sagemaker-tab-dataset-create"):
            created = create(ctx)
        with gr.Tab("Browse", elem_id="sagemaker-tab-dataset-browse"):
            loader = browse(ctx)
    created.then(*loader)
    return [loader]
