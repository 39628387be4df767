"""`python -m aws_extension`: every core operation from a shell.

Exit status: 0 all done, 1 something failed (items that succeeded stay done), 2 bad usage.
Failures print `error: <item>: <reason>` on stderr; never a traceback for anything a user can cause.
"""

from __future__ import annotations

import argparse
import os
from typing import List, Optional

from ..core.errors import UserError
from .endpoints import cmd_endpoints_delete, cmd_endpoints_deploy, cmd_endpoints_list
from .generate import cmd_generate
from .output import EXIT_FAILED, Cli, error
from .servers import cmd_local, cmd_serve, cmd_ui
from .storage import (cmd_cleanup, cmd_datasets_create, cmd_datasets_delete, cmd_datasets_list, cmd_datasets_show,
                      cmd_models_delete, cmd_models_list, cmd_models_show, cmd_models_sync, cmd_models_upload,
                      cmd_models_upload_url, cmd_setup)


def build_parser() -> argparse.ArgumentParser:
    from ..contract.request import FORM_SAMPLER  # torch-free: the request contract client and server share

    p = argparse.ArgumentParser(prog="python -m aws_extension", description="Amazon SageMaker for Stable Diffusion WebUI")
    p.add_argument("--region", help="AWS region (else AWS_REGION, the WebUI setting, the profile's)")
    p.add_argument("--profile", help="AWS profile (else AWS_PROFILE)")
    p.add_argument("--bucket", help="S3 bucket (else SD_SAGEMAKER_BUCKET, else sd-webui-sagemaker-<account>-<region>)")
    p.add_argument("--json", action="store_true", help="print records as JSON")
    groups = p.add_subparsers(dest="group", required=True, metavar="GROUP")

    def command(sub, name: str, fn, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.set_defaults(fn=fn)
        return c

    c = command(groups, "setup", cmd_setup, "create the bucket (CORS, lifecycle) if missing; safe to re-run")
    c.add_argument("--create-role", action="store_true", help="also create the SageMaker execution role")
    c = command(groups, "cleanup", cmd_cleanup, "list (or with --yes remove) leftovers of this tool")
    c.add_argument("--yes", action="store_true", help="remove them")

    models = groups.add_parser("models", help="model files in S3").add_subparsers(dest="command", required=True)
    type_help = "checkpoint, embedding, lora, controlnet, hypernetwork, vae (or the folder name)"
    auto_help = "auto (the default: each file's header says its type), or " + type_help
    force_help = "upload even if the file's header says it is of another type than --type"
    c = command(models, "upload", cmd_models_upload, "upload model files or folders from this machine")
    c.add_argument("--type", default="auto", help=auto_help)
    c.add_argument("--force", action="store_true", help=force_help)
    c.add_argument("paths", nargs="+", metavar="PATH")
    c = command(models, "upload-url", cmd_models_upload_url, "stream downloads straight into S3")
    c.add_argument("--type", default="auto", help=auto_help)
    c.add_argument("--force", action="store_true", help=force_help)
    c.add_argument("--description", help="a JSON object kept with each model")
    c.add_argument("--allow-private", action="store_true", help="allow loopback and private-network URLs")
    c.add_argument("urls", nargs="+", metavar="URL")
    c = command(models, "sync", cmd_models_sync, "upload every model file of the WebUI's model folders that the cloud "
                "lacks (matched by sha256); the others are skipped without sending")
    c.add_argument("--type", action="append", help=type_help + "; repeatable (default: every type). A folder of "
                   "mixed files with one --type: all its files are of that type")
    c.add_argument("--dry-run", action="store_true", help="list what would be uploaded, and what is there already")
    c.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="a WebUI folder, its models folder, one type's folder, or any folder of model files (each "
                        "file's header says its type) (repeatable; default: the WebUI this extension is in)")
    c = command(models, "list", cmd_models_list, "list models in the cloud")
    c.add_argument("--type", help=type_help)
    for name, fn, what in (("show", cmd_models_show, "show one model's record"),
                           ("delete", cmd_models_delete, "delete a model and its record")):
        c = command(models, name, fn, what)
        c.add_argument("--type", required=True, help=type_help)
        c.add_argument("name", metavar="NAME")

    endpoints = groups.add_parser("endpoints", help="SageMaker endpoints").add_subparsers(dest="command", required=True)
    c = command(endpoints, "deploy", cmd_endpoints_deploy, "deploy an inference endpoint")
    c.add_argument("--name", help="default esd-<type>-XXXXX")
    c.add_argument("--endpoint-type", choices=["async", "real-time"], default="async")
    c.add_argument("--instance-type", default="ml.g5.2xlarge")
    c.add_argument("--min", type=int, help="fewest instances when autoscaling (async 0, real-time 1)")
    c.add_argument("--max", type=int, default=1, help="most instances when autoscaling")
    c.add_argument("--no-autoscaling", action="store_true")
    c.add_argument("--role-arn", help="SageMaker execution role (else SD_SAGEMAKER_ROLE_ARN or the setup role)")
    c.add_argument("--image-uri", help="inference image (else SD_SAGEMAKER_IMAGE_URI)")
    c.add_argument("--preload-checkpoint", metavar="NAME",
                   help="a cloud checkpoint (as for generate --checkpoint) the endpoint loads before its first request")
    waiting = c.add_mutually_exclusive_group()
    waiting.add_argument("--wait", dest="wait", action="store_true", default=True,
                         help="wait until InService and attach autoscaling (the default)")
    waiting.add_argument("--no-wait", dest="wait", action="store_false",
                         help="return at once; the endpoint runs (and bills) one instance or more until its "
                              "autoscaling is attached by `endpoints list` or the tab once it is InService")
    command(endpoints, "list", cmd_endpoints_list, "list endpoints (and attach pending autoscaling)")
    c = command(endpoints, "delete", cmd_endpoints_delete, "delete an endpoint and all it left behind")
    c.add_argument("name", metavar="NAME")

    datasets = groups.add_parser("datasets", help="training datasets in S3").add_subparsers(dest="command", required=True)
    c = command(datasets, "create", cmd_datasets_create, "upload images (and captions) as a new dataset")
    c.add_argument("--name", required=True)
    c.add_argument("--description")
    c.add_argument("files", nargs="+", metavar="FILE")
    command(datasets, "list", cmd_datasets_list, "list datasets")
    for name, fn, what in (("show", cmd_datasets_show, "show a dataset"), ("delete", cmd_datasets_delete, "delete a dataset")):
        command(datasets, name, fn, what).add_argument("name", metavar="NAME")

    c = command(groups, "generate", cmd_generate, "generate images on an endpoint (txt2img; img2img with --init-image)")
    c.add_argument("--endpoint", required=True, help="an InService endpoint")
    c.add_argument("--checkpoint", required=True, help="a cloud checkpoint: file name, key, or model hash")
    c.add_argument("--vae", help="a cloud VAE (default: the checkpoint's own)")
    c.add_argument("--prompt", required=True, help="the WebUI's prompt syntax, <lora:name:weight> included")
    c.add_argument("--negative-prompt", default="")
    c.add_argument("--steps", type=int)
    c.add_argument("--sampler", default=FORM_SAMPLER,
                   help=f"e.g. 'Euler a', 'Euler' (default {FORM_SAMPLER!r}, as the WebUI's form and the tab)")
    c.add_argument("--scheduler", help="schedule type: Automatic, Karras, Exponential")
    c.add_argument("--cfg-scale", type=float)
    c.add_argument("--width", type=int)
    c.add_argument("--height", type=int)
    c.add_argument("--seed", type=int, help="-1 (default) draws one")
    c.add_argument("--batch-size", type=int)
    c.add_argument("--init-image", metavar="PNG", help="img2img from this image (PNG or JPEG)")
    c.add_argument("--denoising-strength", type=float, help="img2img: how much to change (default 0.75)")
    c.add_argument("--mask", metavar="PNG", help="img2img: inpaint where the mask is white")
    c.add_argument("--out", default="outputs", metavar="DIR", help="where the PNGs go (default outputs/)")
    c.add_argument("--timeout", type=float, default=900, metavar="SECONDS",
                   help="how long to wait for an async endpoint's answer (default 900; at least 1800 when it "
                        "scales up from zero)")

    c = command(groups, "ui", cmd_ui, "serve the Amazon SageMaker tab without the WebUI")
    c.add_argument("--local", action="store_true", help="run on the embedded AWS emulator (no account needed)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    c.add_argument("--port", type=int, default=7861)
    c.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="a folder the 'from WebUI' paths may reach (repeatable)")
    c.add_argument("--allow-private-urls", action="store_true", help="allow loopback and private-network URLs")
    c.add_argument("--auth", metavar="USER:PASSWORD", help="require a login, as the WebUI's --gradio-auth")
    c = command(groups, "serve", cmd_serve, "run the inference server that endpoints run (GET /ping, POST /invocations)")
    c.add_argument("--host", default=os.environ.get("SD_SAGEMAKER_SERVE_HOST", "127.0.0.1"),
                   help="address to listen on (default loopback; the container image sets 0.0.0.0)")
    c.add_argument("--port", type=int, default=8080, help="SageMaker's port is 8080; 0 picks a free one")
    c.add_argument("--cache-dir", help="models and configs go here (else SD_SAGEMAKER_CACHE_DIR, /tmp/sd-webui-sagemaker)")
    c.add_argument("--cache-gb", type=float, help="model cache size (else SD_SAGEMAKER_CACHE_GB, 80%% of the free disk)")
    c = command(groups, "local", cmd_local, "run the AWS emulator on loopback (no AWS account needed)")
    c.add_argument("--port", type=int, default=5005, help="0 picks a free port")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cli = Cli(args)
    try:
        return args.fn(cli)
    except UserError as exc:
        item = getattr(args, "name", None)
        message = str(exc)
        error(message if not item or item in message else f"{item}: {message}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("stopped.")
        return 130
