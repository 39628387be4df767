"""Generation: one checkpoint loaded at a time, VAE/LoRA/embeddings switched per request, WebUI-shaped results.

LoRAs are fused into the weights and the peft layers removed again, so the modules keep the same structure
(a compiled UNet stays valid) and there is no per-step LoRA cost; the weights they touched are kept on the CPU
and copied back when a request asks for a different set. Everything that touches the models runs on one thread,
the GpuWorker (see compiled.py): requests hand their generation to it and wait.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from PIL import Image

from ..core.errors import Interrupted
from .cache import ModelCache
from .checkpoint import load_pipeline, load_vae
from .compiled import GpuWorker, cache_supported
from ..contract.infotext import model_hash, network_hash
from .prompts import Embeddings, encode_prompts, extract_networks
from ..contract.request import BadRequest, GenerationRequest, resolve_seeds
from . import ksampling, masks, sampling
from .rng import ImageNoise

log = logging.getLogger(__name__)

# VAE decode memory grows with the pixels decoded at once. Estimate for an A10G (24 GB): the fp16 SDXL UNet and
# text encoders take ~7 GB, and SDXL's VAE decodes upcast to fp32, where one 1024x1024 image peaks at ~7 GB
# (128-channel activations at full size are 0.5 GB each, several alive at once). A batch of 4 at once would need
# ~28 GB, so past one 1024x1024 image's worth the batch is decoded one image at a time (slices), and an image
# itself past 1536x1536 (~16 GB at once) in overlapping tiles.
VAE_SLICE_PIXELS = 1024 * 1024  # width * height * images decoded at once
VAE_TILE_PIXELS = 1536 * 1536  # width * height of one image
GPU_FAMILIES = ("ml.g", "ml.p")
UNSUPPORTED_FAMILIES = ("ml.inf", "ml.trn")  # Inferentia and Trainium need Neuron-compiled models


class DeviceError(RuntimeError):
    """The instance cannot run this server as it should; /ping reports it so the deploy fails with the reason."""


def check_device(instance_type: Optional[str]) -> None:
    """On a GPU instance type, a usable CUDA device or an error that says why; never a quiet, slow CPU fallback."""
    if not instance_type:
        return  # a local run or a test: the CPU is fine
    if instance_type.startswith(UNSUPPORTED_FAMILIES):
        raise DeviceError(f"{instance_type} is not supported by this inference server: use a GPU instance "
                          "(ml.g*, ml.p*) or a CPU one.")
    if not instance_type.startswith(GPU_FAMILIES):
        return
    problem = None
    if not torch.cuda.is_available():
        problem = "torch sees no CUDA device"
    else:
        try:
            torch.zeros(1, device="cuda")
        except Exception as exc:
            problem = f"the CUDA device cannot be used ({exc})"
    if problem:
        cuda = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a build without CUDA"
        raise DeviceError(
            f"{instance_type} is a GPU instance, but {problem} (torch {torch.__version__}, {cuda}). The host's "
            "NVIDIA driver is most likely older than this image needs: give the endpoint's production variant an "
            "InferenceAmiVersion with a newer driver (e.g. al2-ami-sagemaker-inference-gpu-3-1). Not starting "
            "on the CPU, which would take minutes per image.")


def model_name(uri: str) -> str:
    """The WebUI names models by file stem: `<lora:name:w>`, embeddings, the infotext's Model."""
    return uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]


@dataclass
class Loaded:
    uri: str
    path: Path
    sha256: str
    pipe: object
    arch: object
    scheduler_config: dict
    vae: object  # the checkpoint's own VAE, put back when a request has no override
    vae_uri: Optional[str] = None
    vae_path: Optional[Path] = None
    vae_sha256: Optional[str] = None
    loras: tuple = ()
    lora_backup: Dict[Tuple[str, str], torch.Tensor] = field(default_factory=dict)
    embeddings: Embeddings = field(default_factory=Embeddings)
    override_vaes: dict = field(default_factory=dict)
    compiled: object = None  # the UNet's CompiledModule when compiling


@dataclass
class Generated:
    images: List[Image.Image]
    seeds: List[int]
    subseeds: List[int]
    model_name: str
    model_hash: str
    vae_name: Optional[str]
    vae_hash: Optional[str]
    lora_hashes: Dict[str, str]  # name -> the WebUI's 12-hex network hash, for "Lora hashes"
    ti_hashes: Dict[str, str]  # the embeddings the prompts used, for "TI hashes"
    seconds: float


class Engine:
    def __init__(self, cache: ModelCache, work_dir: Path, device: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None):
        if device is None:
            check_device(os.environ.get("SD_SAGEMAKER_INSTANCE_TYPE"))
        self.cache = cache
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or (torch.float16 if self.device == "cuda" else torch.float32)
        self.config_root = Path(work_dir) / "configs"
        self.loaded: Optional[Loaded] = None
        self.worker = GpuWorker()  # one generation at a time: one GPU, one set of weights, one thread
        # torch.compile: on by default on a GPU (SD_SAGEMAKER_COMPILE=off to turn it off, =on to force it)
        wanted = os.environ.get("SD_SAGEMAKER_COMPILE", "auto").lower()
        self.compile = wanted == "on" or (wanted == "auto" and self.device == "cuda")
        self.compile_mode = os.environ.get("SD_SAGEMAKER_COMPILE_MODE", "reduce-overhead") or None
        self.compile_backend = os.environ.get("SD_SAGEMAKER_COMPILE_BACKEND", "inductor")
        self.artifacts = None
        self.compile_cache = "off"  # what /ping says about the S3 compile cache
        if self.compile and self.compile_backend == "inductor":
            self._load_artifacts()

    def _load_artifacts(self) -> None:
        from .compiled import ArtifactStore, cache_key

        if not cache_supported():
            self.compile_cache = "unsupported"
            log.warning("the S3 compile cache is unavailable with torch %s (it needs torch 2.7 or later): each new "
                        "instance compiles afresh", torch.__version__)
            return
        try:
            aws = self.cache.aws
            self.artifacts = ArtifactStore(aws.client("s3"), aws.bucket, cache_key(self.compile_mode))
            loaded = self.artifacts.load()
            self.compile_cache = f"loaded {loaded}"
            log.info("loaded %d compile cache object(s) from S3", loaded)
        except Exception as exc:  # no cache is slower, not broken
            self.compile_cache = f"failed: {exc}"
            log.warning("compile cache unavailable: %s", exc)

    def compile_stats(self) -> dict:
        return {"enabled": self.compile, "cache": self.compile_cache}

    def _save_artifacts(self, seconds: float) -> None:
        try:
            if self.artifacts:
                self.artifacts.save()
        except Exception as exc:
            log.warning("could not save the compile cache to S3: %s", exc)

    # -- models -----------------------------------------------------------------------------------------
    def _checkpoint(self, uri: str, path: Path) -> Loaded:
        if self.loaded and self.loaded.uri == uri and self.loaded.path == path:
            return self.loaded
        if self.loaded:  # free the old weights before the new ones arrive: two SDXL do not fit a 24 GB GPU
            self._unload()
        started = time.monotonic()
        pipe, arch = load_pipeline(path, device=self.device, dtype=self.dtype, config_root=self.config_root)
        pipe.set_progress_bar_config(disable=True)
        compiled = None
        if self.compile:
            from .compiled import CompiledModule

            compiled = CompiledModule(pipe.unet, self.worker, mode=self.compile_mode, backend=self.compile_backend,
                                      on_compiled=self._save_artifacts)
        log.info("loaded %s (%s) in %.1f s", uri, arch.kind, time.monotonic() - started)
        self.loaded = Loaded(uri=uri, path=path, sha256=self.cache.sha256(path), pipe=pipe, arch=arch,
                             scheduler_config=dict(pipe.scheduler.config), vae=pipe.vae, compiled=compiled)
        return self.loaded

    def _unload(self) -> None:
        """Runs on the worker: no compile left for the old model, dynamo's caches (which keep its graphs and their
        CUDA-graph memory pools alive) cleared on the thread that owns them, the old weights freed."""
        old, self.loaded = self.loaded, None
        if old.compiled:
            old.compiled.restore()
            dropped = self.worker.drop_idle()
            if dropped:
                log.info("dropped %d pending compile(s) of %s", dropped, old.uri)
            torch._dynamo.reset()
        log.info("unloading %s", old.uri)
        del old
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def preload(self, uri: str) -> None:
        """Fetch and load a checkpoint before any request asks for it (SD_SAGEMAKER_PRELOAD_CHECKPOINT)."""
        def load():
            with self.cache.using(uri) as path, torch.inference_mode():  # as a request loads it
                self._checkpoint(uri, path)
        self.worker.run(load)

    def _vae(self, m: Loaded, uri: Optional[str], path: Optional[Path]) -> None:
        if path == m.vae_path:  # the path names the S3 object's version too: a re-upload is a new path
            return
        if uri is None:
            vae = m.vae
        else:  # the last override stays in memory: "none" and back costs nothing
            vae = m.override_vaes.get(path) or load_vae(path, m.arch, device=self.device, dtype=self.dtype,
                                                        config_root=self.config_root)
            m.override_vaes = {path: vae}
        m.pipe.vae = vae
        m.vae_uri, m.vae_path, m.vae_sha256 = uri, path, (self.cache.sha256(path) if path else None)

    def _loras(self, m: Loaded, wanted: List[Tuple[str, Path, float]]) -> None:
        key = tuple((str(path), weight) for _, path, weight in wanted)
        if key == m.loras:
            return
        pipe = m.pipe
        modules = {"unet": pipe.unet, "text_encoder": pipe.text_encoder,
                   "text_encoder_2": getattr(pipe, "text_encoder_2", None)}
        with torch.no_grad():
            for (part, name), weight in m.lora_backup.items():  # back to the checkpoint's own weights
                modules[part].get_submodule(name).weight.copy_(weight)
        m.lora_backup, m.loras = {}, ()
        if not wanted:
            return
        names = [f"lora{i}" for i in range(len(wanted))]
        try:
            for adapter, (name, path, _) in zip(names, wanted):
                try:
                    pipe.load_lora_weights(str(path), adapter_name=adapter, unet_config=pipe.unet.config)
                except Exception as exc:
                    raise BadRequest("prompt", f"LoRA '{name}' could not be loaded into this "
                                               f"{m.arch.kind.upper()} checkpoint: {exc}") from exc
            for part, module in modules.items():
                for sub_name, sub in (module.named_modules() if module is not None else ()):
                    if hasattr(sub, "base_layer"):
                        m.lora_backup[(part, sub_name)] = sub.base_layer.weight.detach().to("cpu", copy=True)
            pipe.set_adapters(names, [weight for _, _, weight in wanted])
            pipe.fuse_lora(adapter_names=names)
        finally:
            pipe.unload_lora_weights()  # the fused weights stay; the modules are plain again
        m.loras = key

    def _prepare(self, req: GenerationRequest, stack: ExitStack) -> Tuple[Loaded, str, dict, dict]:
        models = req.models
        path = stack.enter_context(self.cache.using(models.checkpoint))
        m = self._checkpoint(models.checkpoint, path)
        vae_path = stack.enter_context(self.cache.using(models.vae)) if models.vae else None
        self._vae(m, models.vae, vae_path)
        prompt, networks = extract_networks(req.prompt)
        by_name = {model_name(uri): uri for uri in models.lora}
        wanted, lora_hashes = [], {}
        for name, weight in networks:
            if name not in by_name:
                raise BadRequest("prompt", f"The prompt uses LoRA '{name}', which is not in models.lora "
                                           f"({', '.join(by_name) or 'none sent'}).")
            lora_path = stack.enter_context(self.cache.using(by_name[name]))
            wanted.append((name, lora_path, weight))
            lora_hashes[name] = network_hash(self.cache.sha256(lora_path))
        self._loras(m, wanted)
        ti_hashes = {}
        m.embeddings.clear()  # only what this request sends: the WebUI too uses only the embeddings it has
        for uri in models.embeddings:
            name = model_name(uri)
            emb_path = stack.enter_context(self.cache.using(uri))
            m.embeddings.load(name, emb_path, m.arch.kind)
            ti_hashes[name] = network_hash(self.cache.sha256(emb_path))
        used = set(m.embeddings.used([prompt, req.negative_prompt]))
        return m, prompt, lora_hashes, {k: v for k, v in ti_hashes.items() if k in used}

    # -- generation -------------------------------------------------------------------------------------
    def generate(self, req: GenerationRequest, cancel: Optional[threading.Event] = None) -> Generated:
        return self.worker.run(self._generate, req, cancel or threading.Event())

    def _generate(self, req: GenerationRequest, cancel: threading.Event) -> Generated:
        if cancel.is_set():
            raise Interrupted("The generation was stopped because the server is shutting down.")
        with ExitStack() as stack, torch.inference_mode():
            started = time.monotonic()
            m, prompt, lora_hashes, ti_hashes = self._prepare(req, stack)
            # unpadded, as the WebUI: a long prompt and a shorter negative one go through the UNet separately
            embeds = encode_prompts(m.pipe, prompt, req.negative_prompt, clip_skip=req.clip_skip,
                                    embeddings=m.embeddings, pad=False)
            seeds, subseeds = resolve_seeds(req.seed, req.subseed, req.batch_size, req.n_iter,
                                            subseed_strength=req.subseed_strength)
            images: List[Image.Image] = []
            for i in range(req.n_iter):
                batch = slice(i * req.batch_size, (i + 1) * req.batch_size)
                images += self._run(m, req, embeds, seeds[batch], subseeds[batch], cancel)
            return Generated(images=images, seeds=seeds, subseeds=subseeds, model_name=model_name(m.uri),
                             model_hash=model_hash(m.sha256), vae_name=model_name(m.vae_uri) if m.vae_uri else None,
                             vae_hash=model_hash(m.vae_sha256) if m.vae_sha256 else None, lora_hashes=lora_hashes,
                             ti_hashes=ti_hashes, seconds=time.monotonic() - started)

    def _run(self, m: Loaded, req: GenerationRequest, embeds: dict, seeds: List[int], subseeds: List[int],
             cancel: threading.Event) -> List[Image.Image]:
        def step(i: int) -> None:
            if cancel.is_set():
                raise Interrupted("The generation was stopped because the server is shutting down.")

        n = len(seeds)
        noise = ImageNoise(req.randn_source, self.device, seeds, subseeds, req.subseed_strength)
        inits = self._inits(req, n) if req.task == "img2img" else None
        mask = masks.prepare(decode_image(req.mask, "mask"), req.width, req.height, req.mask_blur,
                             bool(req.inpainting_mask_invert)) if inits and req.mask else None
        prepare_vae(m.pipe.vae, n, req.width, req.height)
        alphas = ksampling.alphas_cumprod(m.scheduler_config)
        v = m.scheduler_config.get("prediction_type") == "v_prediction"
        with m.compiled.denoising() if m.compiled else nullcontext():
            images = sampling.generate(m.pipe, req, embeds, inits, mask, noise, seeds, alphas, v, self.device, step)
        return mask.lay_under(images, inits) if mask else images

    @staticmethod
    def _inits(req: GenerationRequest, n: int) -> List[Image.Image]:
        inits = [decode_image(req.init_images[j % len(req.init_images)], "init_images").convert("RGB") for j in range(n)]
        return [im.resize((req.width, req.height), Image.LANCZOS) for im in inits]


def prepare_vae(vae, images: int, width: int, height: int) -> None:
    """Slices and tiles past the bounds above; a reduced-precision decode that gives NaN is redone in fp32."""
    if images * width * height > VAE_SLICE_PIXELS:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    if width * height > VAE_TILE_PIXELS:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    if "decode" not in vae.__dict__:
        vae.decode = _nan_safe(vae, vae.decode)


def _nan_safe(vae, decode):
    def nan_safe_decode(z, *args, **kwargs):
        out = decode(z, *args, **kwargs)
        image = out[0] if isinstance(out, tuple) else out.sample
        if vae.dtype == torch.float32 or not torch.isnan(image).any():
            return out
        # SD 1.x VAEs overflow in fp16 on some latents: NaN, which would come out as a black image
        log.warning("the VAE's %s decode gave NaN: re-decoded in fp32", str(vae.dtype).replace("torch.", ""))
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            out = decode(z.float(), *args, **kwargs)
        finally:
            vae.to(dtype)
        return (out[0].to(dtype), *out[1:]) if isinstance(out, tuple) else type(out)(sample=out.sample.to(dtype))
    return nan_safe_decode


def decode_image(data: str, field_name: str) -> Image.Image:
    import base64
    import io

    try:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        return image
    except Exception as exc:
        raise BadRequest(field_name, f"{field_name} could not be read as an image ({exc})") from None
