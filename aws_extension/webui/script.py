"""The "Amazon SageMaker" script of txt2img and img2img: the WebUI's own form, generated on an endpoint.

Only scripts/sagemaker.py imports this module, inside the WebUI, so it imports `modules` at once. Chosen in the
"Script" dropdown (or by the API's script_name), run(p, endpoint, checkpoint, vae) sends what `p` holds to the
endpoint and returns a Processed: the WebUI then shows, saves and answers it as its own and generates nothing.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import gradio as gr
from fastapi.exceptions import HTTPException  # the WebUI's API prints no traceback for these
from modules import images, processing, scripts, shared
from PIL import Image

from . import glue
from ..core.errors import Interrupted, NotFound, Refused, UserError
from ..core import generation
from ..core.generation import Generation, invoke, png_parameters
from ..core.models.lookup import OWN_VAE, cloud_checkpoints, cloud_vaes, find_checkpoint_by_hash, lookup, resolve_models
from ..contract.infotext import png_base64
from ..ui.context import TabContext, choice_update, message

log = logging.getLogger("sd_webui_sagemaker")

TITLE = "Amazon SageMaker"
NO_VAE = OWN_VAE
REFRESH = "\U0001f504"  # the WebUI's refresh symbol
BUILD_WAIT = 5.0  # seconds the UI build waits for AWS; past that the lists start empty and the refresh fills them
LISTS_FRESH = 60.0  # txt2img and img2img are built one after the other: one listing serves both
WATCH_EVERY = 0.2  # seconds between looks at the WebUI's Interrupt and Skip
CANCEL_GRACE = 3.0  # seconds a stopped request gets to wind down before run() returns without it

NO_ENDPOINT = ("Choose an endpoint in the Amazon SageMaker script (the refresh button lists those InService); "
               "through the API, script_args are [endpoint, checkpoint, VAE].")
NO_CHECKPOINT = "Choose a cloud checkpoint in the Amazon SageMaker script."
NO_ENDPOINTS = "No InService endpoint: deploy one in the Amazon SageMaker tab, or wait until it is InService."
NO_CHECKPOINTS = "No checkpoint in the cloud yet: upload one in the Amazon SageMaker tab."
SLOW = f"AWS did not answer within {BUILD_WAIT:.0f} seconds: press {REFRESH} to list the endpoints and models."
INTERRUPTED_EARLY = "Interrupted before anything was sent."
LABELS = ("Endpoint", "Cloud checkpoint", "Cloud VAE")

_context = TabContext(settings=glue.settings)  # the tab's settings, read fresh on every call
_lists: Dict[str, object] = {}
_reachable = threading.Event()  # set while AWS answers: pasting an infotext looks its model hash up only then


def ui_strings() -> List[str]:
    """The script's static texts as the page shows them, for the localizations (errors carry a prefix: not these)."""
    return [TITLE, *LABELS, NO_VAE, NO_ENDPOINTS, NO_CHECKPOINTS, SLOW, INTERRUPTED_EARLY]


class SageMakerError(HTTPException):
    """A UserError as the WebUI reports a failed script: the UI's error box shows its text; the API answers
    its status_code with the text in "detail" and "errors". An HTTPException, because the WebUI's API (A1111 and
    Forge) prints a whole traceback with locals for any other exception: a refusal is the user's to fix, not a bug."""

    def __init__(self, error: UserError):
        status = 400 if isinstance(error, Refused) else 404 if isinstance(error, NotFound) else 500
        super().__init__(status_code=status, detail=str(error))
        self.args = (str(error),)

    def __str__(self) -> str:
        return self.detail


# -- lists ----------------------------------------------------------------------------------------------------------
def serving_endpoints(aws) -> List[str]:
    return generation.serving_endpoints(aws, reconcile=False)  # building a page attaches no autoscaling


def _hint(endpoint_names: List[str], checkpoint_names: List[str]) -> str:
    return NO_ENDPOINTS if not endpoint_names else NO_CHECKPOINTS if not checkpoint_names else ""


def _list_all() -> Tuple[List[str], List[str], List[str], str]:
    try:
        aws = _context.aws()
        found = serving_endpoints(aws), cloud_checkpoints(aws), cloud_vaes(aws)
    except Exception as exc:  # noqa: BLE001 - the WebUI's page must build whatever AWS does
        _reachable.clear()
        return [], [], [NO_VAE], message(exc)
    _reachable.set()
    return (*found, _hint(found[0], found[1]))


def initial_lists() -> Tuple[List[str], List[str], List[str], str]:
    """Endpoints, checkpoints, VAEs and a problem to show, within BUILD_WAIT seconds whatever AWS does."""
    if _lists and time.monotonic() - _lists["at"] < LISTS_FRESH:  # type: ignore[operator]
        return _lists["value"]  # type: ignore[return-value]
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(value=_list_all()), name="sagemaker-script-lists", daemon=True)
    worker.start()
    worker.join(BUILD_WAIT)
    value = box.get("value") or ([], [], [NO_VAE], SLOW)
    _lists.update(at=time.monotonic(), value=value)
    return value


def refresh(lister: Callable, keep: Optional[str], empty: str = ""):
    """A refresh button's answer: the dropdown's new choices (keeping its value if still there) and the message."""
    try:
        choices = lister(_context.aws())
    except Exception as exc:  # noqa: BLE001 - shown beside the lists
        _reachable.clear()
        return gr.update(), gr.update(value=message(exc), visible=True)
    _reachable.set()
    note = empty if not choices else ""
    return choice_update(choices, keep), gr.update(value=note, visible=bool(note))


def pasted_checkpoint(params: dict):
    """Pasting an infotext: the cloud checkpoint whose sha256 starts with its "Model hash", else the one named by
    its "Model"; None (nothing changes) when none matches or AWS has not answered lately."""
    short, name = (params.get("Model hash") or "").strip(), (params.get("Model") or "").strip()
    if not (short or name) or not _reachable.is_set():
        return None
    try:  # a few requests whatever the number of checkpoints: no listing, no record read per model
        aws = _context.aws()
        found = find_checkpoint_by_hash(aws, short) if short else None
        if not found and name:
            model = lookup(aws, "checkpoint", name)
            found = model.name if model else None
    except Exception as exc:  # noqa: BLE001 - a paste must never fail for us
        log.warning("Amazon SageMaker: could not look up the pasted model: %s", exc)
        return None
    if not found:
        return None
    names = list(_lists["value"][1]) if _lists else []  # type: ignore[index]
    return gr.update(choices=names if found in names else names + [found], value=found)


# -- the request ----------------------------------------------------------------------------------------------------
def _number(value, default: int = -1) -> int:
    return default if value in (None, "") else int(value)


def prompts_of(p) -> Tuple[str, str]:
    """The prompt and negative prompt, with the chosen styles applied as the WebUI does before generating."""
    prompts = p.all_prompts or (p.prompt if isinstance(p.prompt, list) else [p.prompt])
    negatives = p.all_negative_prompts or (p.negative_prompt if isinstance(p.negative_prompt, list)
                                           else [p.negative_prompt])
    if len(set(prompts)) > 1 or len(set(negatives)) > 1:
        raise Refused("An endpoint request has one prompt for all its images: a prompt per image is not supported.")
    prompt, negative = (prompts or [""])[0] or "", (negatives or [""])[0] or ""
    styles = getattr(shared, "prompt_styles", None)
    if p.styles and styles is not None and not p.all_prompts:  # all_prompts would have them already
        prompt = styles.apply_styles_to_prompt(prompt, p.styles)
        negative = styles.apply_negative_styles_to_prompt(negative, p.styles)
    return prompt, negative


def payload_of(p, task: str, prompt: str, negative: str) -> dict:
    """The WebUI API's txt2img/img2img fields from p. Options the endpoint cannot honour go only when set, so
    that its check names them rather than the picture silently differing."""
    payload = {"prompt": prompt, "negative_prompt": negative, "steps": int(p.steps), "cfg_scale": float(p.cfg_scale),
               "width": int(p.width), "height": int(p.height), "seed": _number(p.seed),
               "subseed": _number(p.subseed), "subseed_strength": float(p.subseed_strength or 0),
               "batch_size": int(p.batch_size), "n_iter": int(p.n_iter)}
    for name in ("sampler_name", "scheduler"):
        if getattr(p, name, None):
            payload[name] = getattr(p, name)
    # the UI's and the API's override wins over the setting, as process_images applies it
    overrides = p.override_settings or {}
    clip_skip = overrides.get("CLIP_stop_at_last_layers", getattr(shared.opts, "CLIP_stop_at_last_layers", 1))
    source = overrides.get("randn_source", getattr(shared.opts, "randn_source", "GPU")) or "GPU"
    settings = {"CLIP_stop_at_last_layers": int(clip_skip)} if int(clip_skip or 1) > 1 else {}
    settings.update({"randn_source": source} if source != "GPU" else {})  # the noise the user's own WebUI draws
    if settings:
        payload["override_settings"] = settings
    # unset face restoration and tiling mean the settings' choice, as process_images reads them
    restore, tiling = getattr(p, "restore_faces", None), getattr(p, "tiling", None)
    wanted = {"enable_hr": getattr(p, "enable_hr", False),
              "restore_faces": getattr(shared.opts, "face_restoration", False) if restore is None else restore,
              "tiling": getattr(shared.opts, "tiling", False) if tiling is None else tiling}
    payload.update({name: True for name, on in wanted.items() if on})
    if getattr(p, "refiner_checkpoint", None) not in (None, "", "None", "none"):
        payload["refiner_checkpoint"] = p.refiner_checkpoint
    for name in ("seed_resize_from_h", "seed_resize_from_w"):
        if _number(getattr(p, name, -1)) > 0:
            payload[name] = int(getattr(p, name))
    if task == "img2img":
        payload.update(_img2img_fields(p))
    return payload


def _img2img_fields(p) -> dict:
    width, height, mode = int(p.width), int(p.height), int(p.resize_mode or 0)
    background = getattr(shared.opts, "img2img_background_color", "#ffffff")

    def fitted(image: Image.Image) -> Image.Image:
        # resized here with the WebUI's own resize modes; latent upscale (3) goes to the endpoint, which names it
        return image if mode == 3 else images.resize_image(mode, image, width, height)

    fields: dict = {"init_images": [png_base64(fitted(images.flatten(i, background))) for i in p.init_images or []],
                    "denoising_strength": float(p.denoising_strength)}
    if mode == 3:
        fields["resize_mode"] = 3
    if p.initial_noise_multiplier not in (None, 1, 1.0):
        fields["initial_noise_multiplier"] = p.initial_noise_multiplier
    if p.image_mask is not None:
        mask = processing.create_binary_mask(p.image_mask, round=getattr(p, "mask_round", True))
        fields.update(mask=png_base64(fitted(mask)), mask_blur=int(p.mask_blur_x),
                      inpainting_mask_invert=int(p.inpainting_mask_invert or 0),
                      inpainting_fill=int(p.inpainting_fill), inpaint_full_res=bool(p.inpaint_full_res))
        if p.mask_blur_y != p.mask_blur_x:
            fields["mask_blur_y"] = int(p.mask_blur_y)
    return fields


# -- generating -----------------------------------------------------------------------------------------------------
def _stopped() -> bool:
    return bool(getattr(shared.state, "interrupted", False) or getattr(shared.state, "skipped", False))


class _Progress:
    """Shows the request's state as the WebUI's progress text (beside its progress bar, and in /sdapi/v1/progress)
    until closed; a request left running after an interrupt writes nothing more."""

    def __init__(self):
        self._lock, self._live = threading.Lock(), True

    def show(self, text: str) -> None:
        with self._lock:
            if self._live:
                shared.state.textinfo = f"{TITLE}: {text}"

    def on_state(self, state: str, text: str) -> None:
        self.show(text)

    def close(self) -> None:
        with self._lock:
            self._live = False
            shared.state.textinfo = None


def _invoke_watched(aws, endpoint: str, task: str, payload: dict, models: dict,
                    progress: _Progress) -> Tuple[Optional[Generation], str]:
    """(the generation, "") or, after Interrupt or Skip, (None, what happened); errors raise."""
    cancel, box = threading.Event(), {}

    def work() -> None:
        try:
            box["result"] = invoke(aws, endpoint, task, payload, models, on_state=progress.on_state, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - raised again below, in the WebUI's thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="sagemaker-generate", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(WATCH_EVERY)
        if _stopped() and not cancel.is_set():
            cancel.set()  # invoke stops at once, saying what becomes of the request (a real-time one runs on)
            worker.join(CANCEL_GRACE)
            break
    if "result" in box:
        return box["result"], ""
    if cancel.is_set():
        error = box.get("error")
        return None, f"Interrupted: {error}" if isinstance(error, Interrupted) else \
            f"Interrupted: stopped waiting for endpoint '{endpoint}'."
    raise box["error"]


def _processed(p, generation: Generation, endpoint: str):
    """The WebUI's Processed as local generation makes it: PIL images carrying their infotexts, the seeds."""
    info = generation.info
    pictures, texts = [], []
    for i, png in enumerate(generation.images):
        image = Image.open(io.BytesIO(png))
        image.load()
        text = generation.infotexts[i] if i < len(generation.infotexts) else png_parameters(png) or ""
        image.info["parameters"] = text  # the gallery and "send to" read it, as from a local image
        pictures.append(image)
        texts.append(text)
    for key in ("sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash"):  # process_images sets them on p
        if info.get(key) is not None:
            setattr(p, key, info[key])
    p.comment(f"Generated on Amazon SageMaker endpoint '{endpoint}' in {generation.seconds:.1f} s.")
    processed = processing.Processed(
        p, pictures, seed=info.get("seed", _number(p.seed)), info=texts[0] if texts else "",
        subseed=info.get("subseed"), all_prompts=info.get("all_prompts"),
        all_negative_prompts=info.get("all_negative_prompts"), all_seeds=info.get("all_seeds"),
        all_subseeds=info.get("all_subseeds"), infotexts=texts)
    for key in ("sampler_name", "clip_skip"):  # what the endpoint used: its canonical sampler name, Clip skip
        if info.get(key) is not None:
            setattr(processed, key, info[key])
    processed.extra_generation_params = {**(processed.extra_generation_params or {}),
                                         **(info.get("extra_generation_params") or {})}
    return processed


def _save(p, processed) -> None:
    """Into the WebUI's outputs, as process_images saves each image (the API's requests ask not to, by default)."""
    opts = shared.opts
    if not getattr(opts, "samples_save", True) or p.do_not_save_samples:
        return
    for i, image in enumerate(processed.images):
        seed = processed.all_seeds[i] if i < len(processed.all_seeds) else processed.seed
        prompt = processed.all_prompts[i] if i < len(processed.all_prompts) else processed.prompt
        try:
            images.save_image(image, p.outpath_samples, "", seed, prompt, getattr(opts, "samples_format", "png"),
                              info=processed.infotexts[i], p=p)
        except OSError as exc:  # the images still reach the gallery and the API's answer
            log.warning("Amazon SageMaker: could not save image %d: %s", i + 1, exc)
            processed.comments += f"Could not save image {i + 1}: {exc}\n"


def generate(p, endpoint: Optional[str], checkpoint: Optional[str], vae: Optional[str]):
    endpoint, checkpoint = (endpoint or "").strip(), (checkpoint or "").strip()
    if not endpoint:
        raise Refused(NO_ENDPOINT)
    if not checkpoint:
        raise Refused(NO_CHECKPOINT)
    task = "img2img" if isinstance(p, processing.StableDiffusionProcessingImg2Img) else "txt2img"
    prompt, negative = prompts_of(p)
    payload = payload_of(p, task, prompt, negative)
    progress = _Progress()
    try:
        progress.show("finding the models in the cloud")
        aws = _context.aws()
        models = resolve_models(aws, checkpoint, vae, [prompt], [negative])
        if _stopped():
            return processing.Processed(p, [], seed=_number(p.seed), info=INTERRUPTED_EARLY)
        generation, stopped = _invoke_watched(aws, endpoint, task, payload, models, progress)
    finally:
        progress.close()
    if generation is None:
        return processing.Processed(p, [], seed=_number(p.seed), info=stopped)
    processed = _processed(p, generation, endpoint)
    _save(p, processed)
    return processed


class SageMakerScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return True  # in the "Script" dropdown of both tabs

    def ui(self, is_img2img):
        """The controls, in the order of the API's script_args: endpoint, checkpoint, VAE."""
        endpoint_names, checkpoint_names, vae_names, problem = initial_lists()

        def tool(name: str):
            return gr.Button(REFRESH, elem_id=self.elem_id(name), elem_classes=["tool"], scale=0)

        with gr.Row():
            endpoint = gr.Dropdown(endpoint_names, value=next(iter(endpoint_names), None), label=LABELS[0],
                                   elem_id=self.elem_id("endpoint"))
            endpoint_refresh = tool("endpoint_refresh")
        with gr.Row():
            checkpoint = gr.Dropdown(checkpoint_names, value=next(iter(checkpoint_names), None),
                                     label=LABELS[1], elem_id=self.elem_id("checkpoint"))
            checkpoint_refresh = tool("checkpoint_refresh")
            vae = gr.Dropdown(vae_names, value=NO_VAE, label=LABELS[2], elem_id=self.elem_id("vae"))
            vae_refresh = tool("vae_refresh")
        note = gr.Markdown(problem, visible=bool(problem), elem_id=self.elem_id("message"))
        for component in (endpoint, endpoint_refresh, checkpoint, checkpoint_refresh, vae, vae_refresh):
            component.do_not_save_to_config = True  # ui-config.json would pin choices that change in the cloud

        endpoint_refresh.click(lambda keep: refresh(serving_endpoints, keep, NO_ENDPOINTS), endpoint, [endpoint, note])
        checkpoint_refresh.click(lambda keep: refresh(cloud_checkpoints, keep, NO_CHECKPOINTS), checkpoint,
                                 [checkpoint, note])
        vae_refresh.click(lambda keep: refresh(cloud_vaes, keep), vae, [vae, note])
        self.infotext_fields = [(checkpoint, pasted_checkpoint)]
        return [endpoint, checkpoint, vae]

    def run(self, p, endpoint=None, checkpoint=None, vae=None):
        try:
            return generate(p, endpoint, checkpoint, vae)
        except UserError as exc:
            log.warning("Amazon SageMaker: %s", exc)  # one line in the console; the API answers with the text
            raise SageMakerError(exc) from None
