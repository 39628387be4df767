"""Generate (standalone only): txt2img / img2img on an endpoint with the cloud's models.

Inside the WebUI, its own txt2img and img2img tabs do this through our script, so the tab there has no such section.
"""

from __future__ import annotations

import io
import time

import gradio as gr

from ..core.errors import Interrupted
from ..core.generation import SERVING, invoke, png_parameters
from ..core.models.lookup import (OWN_VAE, add_to_prompt, checkpoint_base, fitting, generate_models,
                                  remove_from_prompt, resolve_models)
from ..contract.infotext import png_base64
from ..core.models.transfer import Progress
from ..contract import request
from .context import TabContext, choice_update, message, run_with_progress
from .endpoints import Watch

SAMPLERS = list(request.SAMPLERS)  # what the inference server takes
SCHEDULES = list(request.SCHEDULES)
NO_ENDPOINT = "Choose an endpoint first: click Refresh beside it to list those InService."


def gallery_images(pngs: list) -> list:
    """PIL images keep their "parameters" text, which gradio writes back into the PNGs it serves."""
    from PIL import Image

    return [Image.open(io.BytesIO(png)) for png in pngs]


def stop_job(job: dict) -> None:
    """The Stop click: the running generation's cancel (or, before it registers, a flag it checks)."""
    job["stopped"] = True
    if job.get("cancel") is not None:
        job["cancel"].set()


def serving(listed: list) -> list:
    return [e.name for e in listed if e.status in SERVING]


def build(ctx: TabContext, watch: Watch) -> tuple:
    """The section; returns its loaders as the page opens: (the cloud models', the endpoints' (followed by watch))."""
    gr.Markdown("### Generate\nOn an InService endpoint, with the checkpoint, VAE, LoRAs and embeddings from the cloud: "
                "the lists offer only those made for the checkpoint's base model (or whose base is not known).")
    with gr.Row():
        endpoint = gr.Dropdown([], label="Endpoint", elem_id="sagemaker-gen-endpoint")
        endpoints_refresh = gr.Button("Refresh", elem_id="sagemaker-gen-endpoint-refresh", scale=0)
        checkpoint = gr.Dropdown([], label="Cloud checkpoint", elem_id="sagemaker-gen-checkpoint")
        vae = gr.Dropdown([OWN_VAE], value=OWN_VAE, label="Cloud VAE", elem_id="sagemaker-gen-vae")
        models_refresh = gr.Button("Refresh", elem_id="sagemaker-gen-models-refresh", scale=0)
    # picking one writes its tag into the prompt, unpicking takes it out, as the WebUI's extra networks do
    extras = gr.Dropdown([], value=[], multiselect=True, label="LoRAs and embeddings (added to the prompt)",
                         elem_id="sagemaker-gen-extras")
    hidden = gr.Markdown("", elem_id="sagemaker-gen-hidden")
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="sagemaker-gen-prompt")
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="sagemaker-gen-negative")
    with gr.Row():
        sampler = gr.Dropdown(SAMPLERS, value=request.FORM_SAMPLER, label="Sampling method", elem_id="sagemaker-gen-sampler")
        schedule = gr.Dropdown(SCHEDULES, value="Automatic", label="Schedule type", elem_id="sagemaker-gen-schedule")
        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="sagemaker-gen-steps")
        cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="sagemaker-gen-cfg")
    with gr.Row():
        width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="sagemaker-gen-width")
        height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="sagemaker-gen-height")
        batch = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="sagemaker-gen-batch")
        seed = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id="sagemaker-gen-seed")
    with gr.Accordion("img2img", open=False, elem_id="sagemaker-gen-img2img"):
        init = gr.Image(type="pil", label="Init image (optional: generates img2img)", elem_id="sagemaker-gen-init")
        strength = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="sagemaker-gen-denoising")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="sagemaker-gen-run")
        stop = gr.Button("Stop", elem_id="sagemaker-gen-stop", scale=0)
    result = gr.Textbox(label="Progress", interactive=False, elem_id="sagemaker-gen-result")
    gallery = gr.Gallery(label="Images", columns=4, object_fit="contain", elem_id="sagemaker-gen-gallery")
    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="sagemaker-gen-info")
    infotexts = gr.State([])  # one per image: the selected image's is shown
    # this page's running generation (State gives each page its own dict, passed by reference to both clicks);
    # gradio's own `cancels` does not reliably close a generator, so Stop sets the core's cancel itself
    job = gr.State({})
    # this page's last listing: {"models": GenerateModels, "bases": {checkpoint name: its base}}, and the extras
    # picked (what the prompt got a tag for), so that a pick or an unpick changes only its own tag
    cloud = gr.State({})
    picked = gr.State([])

    def list_serving(keep, page):
        try:
            names = serving(watch.listed(page))
        except Exception as exc:  # noqa: BLE001
            return choice_update([]), message(exc)
        text = f"{len(names)} InService endpoint(s)." if names else \
            "No InService endpoint: deploy one in Cloud Assets Management, or wait until it is InService."
        return choice_update(names, keep), text

    def fitted(models, base, keep_vae, keep_extras) -> tuple:
        """The VAE list, the extras' list, the hidden line and the picks still offered, for a checkpoint's base."""
        fit = fitting(models, base)
        labels = [e.label for e in fit.extras]
        kept = [label for label in keep_extras or [] if label in labels]
        return choice_update(fit.vaes, keep_vae), gr.update(choices=labels, value=kept), fit.hidden, kept

    def list_cloud_models(keep_checkpoint, keep_vae, keep_extras):
        try:
            aws = ctx.aws()
            models = generate_models(aws)
            chosen = keep_checkpoint if keep_checkpoint in models.checkpoints else next(iter(models.checkpoints), None)
            base = checkpoint_base(aws, chosen)
        except Exception as exc:  # noqa: BLE001
            return (choice_update([]), gr.update(), gr.update(), gr.update(), message(exc), gr.update(),
                    gr.update())
        loras = sum(e.type == "lora" for e in models.extras)
        text = (f"{len(models.checkpoints)} checkpoint(s), {len(models.vaes)} VAE(s), {loras} LoRA(s), "
                f"{len(models.extras) - loras} embedding(s) in the cloud.") if models.checkpoints else \
            "No checkpoint in the cloud yet: upload one in Cloud Models Management."
        vae_list, extras_list, hidden_line, kept = fitted(models, base, keep_vae, keep_extras)
        return (choice_update(models.checkpoints, chosen), vae_list, extras_list, hidden_line, text,
                {"models": models, "bases": {chosen: base}}, kept)

    def checkpoint_chosen(name, keep_vae, keep_extras, listed):
        """Another checkpoint: the lists for its base (its record read once per listing)."""
        if not listed:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        bases = listed["bases"]
        if name not in bases:
            try:
                bases[name] = checkpoint_base(ctx.aws(), name)
            except Exception as exc:  # noqa: BLE001
                return gr.update(), gr.update(), gr.update(), gr.update(), message(exc)
        return (*fitted(listed["models"], bases[name], keep_vae, keep_extras), gr.update())

    def extras_picked(now, before, prompt_text, listed):
        """A pick adds its tag at the end of the prompt; an unpick removes its tag; the rest is left as it is."""
        table = {e.label: e for e in listed["models"].extras} if listed else {}
        now, text = list(now or []), prompt_text or ""
        for label in now:
            if label not in before and label in table:
                text = add_to_prompt(text, table[label])
        for label in before:
            if label not in now and label in table:
                text = remove_from_prompt(text, table[label])
        return text, now

    def generate(job_now, endpoint_name, checkpoint_name, vae_name, prompt_text, negative_text, sampler_name,
                 schedule_name, steps_n, cfg_scale, width_n, height_n, batch_n, seed_n, init_image, denoising):
        if not endpoint_name:
            yield gr.update(), gr.update(), gr.update(), NO_ENDPOINT
            return
        started = time.monotonic()
        done: dict = {}
        job_now.clear()

        def work(progress, cancel):
            job_now["cancel"] = cancel
            if job_now.get("stopped"):
                cancel.set()

            def on_state(state: str, text: str) -> None:
                progress(Progress(endpoint_name, state=state, message=text))

            on_state("models", "finding the models in the cloud")
            payload = {"prompt": prompt_text or "", "negative_prompt": negative_text or "",
                       "sampler_name": sampler_name, "scheduler": schedule_name, "steps": int(steps_n),
                       "cfg_scale": float(cfg_scale), "width": int(width_n), "height": int(height_n),
                       "batch_size": int(batch_n), "seed": -1 if seed_n is None else int(seed_n)}
            task = "txt2img"
            if init_image is not None:
                task = "img2img"
                payload.update(init_images=[png_base64(init_image)], denoising_strength=float(denoising))
            aws = ctx.aws()
            models = resolve_models(aws, checkpoint_name or "", vae_name, [payload["prompt"]],
                                    [payload["negative_prompt"]])
            try:
                done["generation"] = invoke(aws, endpoint_name, task, payload, models, on_state=on_state,
                                            cancel=cancel)
            except Interrupted as exc:  # asked for: said plainly, not as an error
                return str(exc)
            return done["generation"]

        def render(state: dict) -> str:
            p = state[endpoint_name]
            return f"Endpoint {endpoint_name}: {p.message} ({time.monotonic() - started:.0f} s)"

        def finish(g) -> str:
            if isinstance(g, str):
                return g
            seeds = (g.info.get("all_seeds") or [g.info.get("seed")])
            seed_text = ", ".join(str(s) for s in seeds if s is not None)
            return f"{len(g.images)} image(s) from endpoint {endpoint_name} in {g.seconds:.1f} s" + \
                (f" (seed {seed_text})." if seed_text else ".")

        # progress and errors come as text; the images come once, with the last text
        last = ""
        for last in run_with_progress(work, render, finish):
            if "generation" not in done:
                yield gr.update(), gr.update(), gr.update(), last
        g = done.get("generation")
        if g is not None:
            texts = g.infotexts or [png_parameters(png) or "" for png in g.images]
            yield gallery_images(g.images), (texts[0] if texts else ""), texts, last

    def show_info(texts, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return texts[index] if 0 <= index < len(texts) else gr.update()

    # an endpoint shows here once it is InService, without a Refresh
    watch.view(endpoint, "serving", lambda listed, keep: choice_update(serving(listed), keep))
    watch.after(endpoints_refresh.click(list_serving, [endpoint, watch.page], [endpoint, result]))
    listing_outputs = [checkpoint, vae, extras, hidden, result, cloud, picked]
    models_refresh.click(list_cloud_models, [checkpoint, vae, extras], listing_outputs)
    # the user's picks only: a list refreshed by a handler changes no prompt
    checkpoint.input(checkpoint_chosen, [checkpoint, vae, extras, cloud], [vae, extras, hidden, picked, result])
    extras.input(extras_picked, [extras, picked, prompt, cloud], [prompt, picked])
    form = [job, endpoint, checkpoint, vae, prompt, negative, sampler, schedule, steps, cfg, width, height, batch, seed,
            init, strength]
    run.click(generate, form, [gallery, info, infotexts, result])
    # not queued: it must run while the generation holds the queue
    stop.click(stop_job, job, None, queue=False)
    gallery.select(show_info, infotexts, info)
    return (list_cloud_models, [checkpoint, vae, extras], listing_outputs), \
        (list_serving, [endpoint, watch.page], [endpoint, result])
