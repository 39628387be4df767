"""The WebUI glue: settings, the tab, the routes.

With scripts/, the only place that imports the WebUI's `modules`, always inside functions, so that the
package imports (and its tests run) without the WebUI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..core.config import ENV, Settings

TAB_TITLE = "Amazon SageMaker"
TAB_ID = "sagemaker"
SECTION = ("sagemaker", "Amazon SageMaker")


@dataclass(frozen=True)
class Option:
    key: str  # in shared.opts and config.json
    field: str  # the Settings field it feeds
    default: object
    label: str
    info: str  # shown after the label, in parentheses


OPTIONS = (
    Option("sagemaker_region", "region", "", "AWS region, e.g. us-east-1 (empty: the AWS profile's region)",
           "overridden by --sagemaker-region, AWS_REGION, AWS_DEFAULT_REGION"),
    Option("sagemaker_profile", "profile", "", "AWS profile from ~/.aws/config (empty: the default credentials)",
           "overridden by --sagemaker-profile, AWS_PROFILE"),
    Option("sagemaker_bucket", "bucket", "",
           "S3 bucket for models and datasets (empty: sd-webui-sagemaker-<account id>-<region>)",
           "overridden by --sagemaker-bucket, SD_SAGEMAKER_BUCKET"),
    Option("sagemaker_role_arn", "role_arn", "",
           "SageMaker execution role ARN for new endpoints (empty: the role sd-webui-sagemaker-execution)",
           "overridden by --sagemaker-role-arn, SD_SAGEMAKER_ROLE_ARN"),
    Option("sagemaker_image_uri", "image_uri", "", "Inference container image URI for new endpoints",
           "overridden by --sagemaker-image-uri, SD_SAGEMAKER_IMAGE_URI"),
    Option("sagemaker_allow_private_urls", "allow_private_urls", False,
           "Allow model downloads from loopback and private network addresses (from URL)",
           "also turned on by --sagemaker-allow-private-urls"),
)


def settings_strings() -> List[str]:
    """Every text the settings page shows for us, as the WebUI's localization sees it."""
    # OptionInfo.info() renders its text inside parentheses, as its own text node
    return [SECTION[1]] + [o.label for o in OPTIONS] + [f"({o.info})" for o in OPTIONS]


def _option(opts, key: str, default=None):
    # shared.opts answers config.json's value even before on_ui_settings runs (it never runs with --nowebui),
    # and raises AttributeError for a key it has never seen
    return getattr(opts, key, default)


def settings() -> Settings:
    """Read on every call: the WebUI's settings can change while it runs."""
    from modules import shared

    cmd_opts, opts = getattr(shared, "cmd_opts", None), getattr(shared, "opts", None)
    flags = {o.field: getattr(cmd_opts, o.key, None) for o in OPTIONS if o.field in ENV}
    webui = {o.field: _option(opts, o.key) for o in OPTIONS if o.field in ENV}
    allow_private = bool(getattr(cmd_opts, "sagemaker_allow_private_urls", False)) \
        or bool(_option(opts, "sagemaker_allow_private_urls", False))
    return Settings.resolve(flags, webui, os.environ, allow_private_urls=allow_private)


def _existing(paths) -> List[str]:
    seen: List[str] = []
    for p in paths:
        if not p:
            continue
        full = os.path.abspath(os.path.expanduser(str(p)))
        if os.path.isdir(full) and full not in seen:
            seen.append(full)
    return seen


def model_folders() -> List[str]:
    """The folders the WebUI reads models from, as it resolves them; 'from WebUI' may upload only from these."""
    return _existing(folder for _, folder in _type_folders())


def sync_folders() -> List[Tuple[str, str]]:
    """(type id, folder) for each existing folder the WebUI reads models of that type from: what Sync all walks."""
    seen: List[Tuple[str, str]] = []
    for type_id, folder in _type_folders():
        seen += [(type_id, f) for f in _existing([folder]) if f not in (s for _, s in seen)]
    return seen


def hash_cache():
    """The WebUI's own sha256 cache (its cache.json "hashes", live: what we hash it knows too), then ours."""
    from ..core.models.hashcache import JsonHashCache, Layered, TitleCache

    try:
        from modules import cache as webui_cache  # 1.6 and later
    except ImportError:
        try:
            from modules import hashes as webui_cache  # older: the cache lived in hashes.py
        except ImportError:
            return JsonHashCache()
    section = webui_cache.cache("hashes")
    return Layered([JsonHashCache(), TitleCache(section, save=webui_cache.dump_cache,
                                                lock=getattr(webui_cache, "cache_lock", None))])


def _type_folders() -> List[Tuple[str, Optional[str]]]:
    from modules import paths_internal, shared

    cmd = getattr(shared, "cmd_opts", None)
    models = paths_internal.models_path
    data = getattr(paths_internal, "data_path", os.path.dirname(models))

    def flag(name: str) -> Optional[str]:
        return getattr(cmd, name, None)

    return [
        # checkpoints and VAEs: the WebUI lists the default folder and the flag's folder both
        ("checkpoint", os.path.join(models, "Stable-diffusion")), ("checkpoint", flag("ckpt_dir")),
        ("vae", os.path.join(models, "VAE")), ("vae", flag("vae_dir")),
        # --lora-dir comes from the built-in Lora extension (default models/Lora), which also reads LyCORIS
        ("lora", flag("lora_dir") or os.path.join(models, "Lora")), ("lora", flag("lyco_dir_backcompat")),
        ("hypernetwork", flag("hypernetwork_dir") or os.path.join(models, "hypernetworks")),
        ("embedding", flag("embeddings_dir") or os.path.join(data, "embeddings")),
        # the ControlNet extension reads its folder, its setting's folder and its --controlnet-dir
        ("controlnet", os.path.join(models, "ControlNet")),
        ("controlnet", _option(getattr(shared, "opts", None), "control_net_models_path")),
        ("controlnet", flag("controlnet_dir")),
    ]


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    for o in OPTIONS:
        component = gr.Checkbox if isinstance(o.default, bool) else gr.Textbox
        info = shared.OptionInfo(o.default, o.label, component, section=SECTION)
        shared.opts.add_option(o.key, info.info(o.info))


def register() -> None:
    """Called by scripts/sagemaker.py each time the WebUI (re)loads scripts; it clears callbacks before that."""
    from modules import script_callbacks

    from ..ui.context import TabContext

    # one context for the tab and the routes, so both share the AWS session cache
    ctx = TabContext(settings=settings, model_folders=model_folders, sync_folders=sync_folders, hash_cache=hash_cache)

    def on_ui_tabs():
        from ..ui.tab import build_tab

        return [(build_tab(ctx), TAB_TITLE, TAB_ID)]

    def on_app_started(demo, app):
        from ..ui.routes import add_routes
        from ..ui.standalone import reconcile_in_background

        add_routes(app, ctx)
        reconcile_in_background(ctx)

    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_ui_tabs(on_ui_tabs)
    script_callbacks.on_app_started(on_app_started)
