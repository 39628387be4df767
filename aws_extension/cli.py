"""`python -m aws_extension`: every core operation from a shell.

Exit status: 0 all done, 1 something failed (items that succeeded stay done), 2 bad usage.
Failures print `error: <item>: <reason>` on stderr; never a traceback for anything a user can cause.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Callable, List, Optional

from .errors import NotFound, UserError
from .text import Pace, size_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Cli:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.json = args.json
        self.cancel = threading.Event()
        self._aws = None
        self._last_progress = 0.0
        self.pace = Pace()  # speed and time left of each transfer

    @property
    def aws(self):
        if self._aws is None:
            from .aws import Aws
            from .config import Settings

            flags = {"region": self.args.region, "profile": self.args.profile, "bucket": self.args.bucket}
            self._aws = Aws(Settings.resolve(flags))
        return self._aws

    # -- output -------------------------------------------------------------------------------------
    def out(self, data, text: Callable[[object], str]) -> None:
        if self.json:
            print(json.dumps(to_jsonable(data), indent=2))
        else:
            rendered = text(data)
            if rendered:
                print(rendered)

    def progress(self, p) -> None:
        """A one-line progress bar on stderr, only when a person is watching it."""
        if not sys.stderr.isatty():
            return
        now = time.monotonic()
        final = p.state in ("done", "skipped", "failed", "interrupted")
        if not final and now - self._last_progress < 0.2:
            return
        self._last_progress = now
        pct = f"{100 * p.done / p.total:5.1f}%" if p.total else "     "
        moving = self.pace.text(p.item, p.done, p.total) if p.state == "uploading" else ""
        line = f"{p.state:<11} {pct} {size_text(p.done):>10}  {moving + '  ' if moving else ''}{p.item}"
        sys.stderr.write("\r\033[K" + line[:150] + ("\n" if final else ""))
        sys.stderr.flush()

    def results(self, results: List) -> int:
        """Upload-like batches: a line per item, an error line per failure, status 1 if any failed."""
        if self.json:
            print(json.dumps([r.dict() for r in results], indent=2))
        for r in results:
            if r.ok:
                if not self.json:
                    print(f"{r.status}: {r.item} -> {self.aws.s3_uri(r.key)} ({size_text(r.size)}, sha256 {r.sha256})")
            else:
                error(f"{r.item}: {r.reason}")
        return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED

    def watch_ctrl_c(self, stopping: str = "Stopping after the parts in flight") -> None:
        """First Ctrl-C stops the running transfer cleanly (resumable); a second one quits at once."""
        def stop(signum, frame):
            if self.cancel.is_set():
                raise KeyboardInterrupt
            self.cancel.set()
            sys.stderr.write(f"\n{stopping} (Ctrl-C again to quit now)...\n")

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, stop)


def to_jsonable(data):
    if isinstance(data, list):
        return [to_jsonable(d) for d in data]
    return data.dict() if hasattr(data, "dict") else data


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def table(rows: List[List[str]], header: List[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [header] + rows
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


# -- commands ---------------------------------------------------------------------------------------
def cmd_setup(cli: Cli) -> int:
    from .bootstrap import setup

    result = setup(cli.aws, create_role=cli.args.create_role)
    cli.out(result, lambda r: "\n".join(filter(None, [
        f"Bucket {r.bucket} ({r.region}): {'created' if r.bucket_created else 'already there'}, CORS and lifecycle set.",
        r.role_arn and f"Execution role: {r.role_arn} ({'created' if r.role_created else 'already there'}).",
    ])))
    return EXIT_OK


def cmd_cleanup(cli: Cli) -> int:
    from .cleanup import find_orphans, remove_orphans

    orphans = find_orphans(cli.aws)
    if not cli.args.yes:
        cli.out(orphans, lambda os_: table([[o.kind, o.name, o.detail] for o in os_], ["KIND", "NAME", "DETAIL"])
                + ("\nRun again with --yes to remove these." if os_ else ""))
        return EXIT_OK
    removed: List = []
    remove_orphans(cli.aws, orphans, removed.append)
    cli.out(removed, lambda rs: "\n".join(f"removed {o.kind} {o.name}" for o in rs) or "Nothing to clean up.")
    return EXIT_OK


def cmd_models_upload(cli: Cli) -> int:
    from .models.uploads import upload_paths

    cli.watch_ctrl_c()
    return cli.results(upload_paths(cli.aws, cli.args.type, cli.args.paths, progress=cli.progress, cancel=cli.cancel))


def cmd_models_upload_url(cli: Cli) -> int:
    from .models.urls import upload_urls

    cli.watch_ctrl_c()
    allow = cli.args.allow_private or None
    return cli.results(upload_urls(cli.aws, cli.args.type, cli.args.urls, description=cli.args.description,
                                   allow_private=allow, progress=cli.progress, cancel=cli.cancel))


def cmd_models_list(cli: Cli) -> int:
    from .models.catalog import list_models

    models = list_models(cli.aws, cli.args.type)
    cli.out(models, lambda ms: table([[m.type, m.name, size_text(m.size), m.last_modified] for m in ms],
                                     ["TYPE", "NAME", "SIZE", "UPLOADED"]))
    return EXIT_OK


def cmd_models_show(cli: Cli) -> int:
    from .models.catalog import show_model

    model = show_model(cli.aws, cli.args.type, cli.args.name)
    cli.out(model, lambda m: "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict) else v}"
                                        for k, v in m.dict().items()))
    return EXIT_OK


def cmd_models_delete(cli: Cli) -> int:
    from .models.catalog import delete_model

    delete_model(cli.aws, cli.args.type, cli.args.name)
    cli.out({"deleted": cli.args.name, "type": cli.args.type}, lambda d: f"Deleted {cli.args.name}.")
    return EXIT_OK


def endpoint_text(e) -> str:
    scaling = f"autoscaling {e.min_instances}-{e.max_instances}" if e.autoscaling else "no autoscaling"
    failure = f"  reason: {e.failure_reason}" if e.failure_reason else ""
    return f"{e.name}  {e.type}  {e.status}  {e.instance_type} x{e.instance_count}  {scaling}  created {e.created}{failure}"


def cmd_endpoints_deploy(cli: Cli) -> int:
    from .endpoints import EndpointSpec, deploy, wait_until_settled
    from .endpoints.deploy import initial_instances, running_cost

    a = cli.args
    spec = EndpointSpec(name=a.name, endpoint_type=a.endpoint_type, instance_type=a.instance_type,
                        min_instances=a.min, max_instances=a.max, autoscaling=not a.no_autoscaling,
                        role_arn=a.role_arn, image_uri=a.image_uri, preload_checkpoint=a.preload_checkpoint)
    record = deploy(cli.aws, spec, background=False)
    # AWS starts every endpoint with an instance; autoscaling (and so scale-to-zero) can only be attached once it is
    # InService. Waiting by default means no deploy is left billing for an instance nobody scales down.
    cost = running_cost(record.name, spec.instance_type, initial_instances(spec), spec.autoscaling)
    if a.wait:
        try:
            status = wait_until_settled(cli.aws, record.name,
                                        on_status=lambda s: print(f"{record.name}: {s}", file=sys.stderr, flush=True))
        except (KeyboardInterrupt, UserError) as exc:
            if not isinstance(exc, NotFound):  # stopped waiting, or still Creating: it may well come up and bill
                print(cost, file=sys.stderr)
            raise
        from .endpoints import describe

        record = describe(cli.aws, record.name)
        if status != "InService":
            cli.out(record, endpoint_text)
            error(f"{record.name}: endpoint is {status}" + (f": {record.failure_reason}" if record.failure_reason else ""))
            return EXIT_FAILED
    cli.out(record, lambda e: f"Endpoint {'ready' if a.wait else 'deployment started'}: {endpoint_text(e)}")
    if not a.wait:
        print(cost, file=sys.stderr if cli.json else sys.stdout)
    return EXIT_OK


def cmd_endpoints_list(cli: Cli) -> int:
    from .endpoints import list_endpoints

    cli.out(list_endpoints(cli.aws), lambda es: "\n".join(endpoint_text(e) for e in es) or "(none)")
    return EXIT_OK


def cmd_endpoints_delete(cli: Cli) -> int:
    from .endpoints import delete_endpoint

    delete_endpoint(cli.aws, cli.args.name)
    cli.out({"deleted": cli.args.name}, lambda d: f"Endpoint delete completed: {d['deleted']}, with its config, model "
                                                  f"and autoscaling")
    return EXIT_OK


def dataset_text(d) -> str:
    lines = [f"{d.name}  {d.s3_uri}  {len(d.files)} files  created {d.created}"]
    if d.description:
        lines.append(f"  {d.description}")
    return "\n".join(lines)


def cmd_datasets_create(cli: Cli) -> int:
    from .datasets import create_dataset

    dataset = create_dataset(cli.aws, cli.args.name, cli.args.files, cli.args.description or "")
    cli.out(dataset, lambda d: f"Complete Dataset {d.name} creation: {d.s3_uri}")
    return EXIT_OK


def cmd_datasets_list(cli: Cli) -> int:
    from .datasets import list_datasets

    cli.out(list_datasets(cli.aws), lambda ds: "\n".join(dataset_text(d) for d in ds) or "(none)")
    return EXIT_OK


def cmd_datasets_show(cli: Cli) -> int:
    from .datasets import show_dataset

    cli.out(show_dataset(cli.aws, cli.args.name), lambda d: dataset_text(d) + "\n" + "\n".join(
        f"  {f.name}  {f.size} bytes  sha256 {f.sha256}" for f in d.files))
    return EXIT_OK


def cmd_datasets_delete(cli: Cli) -> int:
    from .datasets import delete_dataset

    delete_dataset(cli.aws, cli.args.name)
    cli.out({"deleted": cli.args.name}, lambda d: f"Deleted dataset {cli.args.name}.")
    return EXIT_OK


def _image_base64(path: str, option: str) -> str:
    import base64

    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise UserError(f"{option} {path}: {exc.strerror or exc}") from None
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        raise UserError(f"{option} {path}: not a PNG or JPEG image")
    return base64.b64encode(data).decode("ascii")


def generate_payload(a: argparse.Namespace) -> dict:
    """The WebUI API payload from the options given; the others keep the server's (the WebUI API's) defaults."""
    if (a.mask or a.denoising_strength is not None) and not a.init_image:
        raise UserError(f"{'--mask' if a.mask else '--denoising-strength'} is for img2img: add --init-image.")
    options = {"prompt": a.prompt, "negative_prompt": a.negative_prompt, "steps": a.steps, "sampler_name": a.sampler,
               "scheduler": a.scheduler, "cfg_scale": a.cfg_scale, "width": a.width, "height": a.height,
               "seed": a.seed, "batch_size": a.batch_size, "denoising_strength": a.denoising_strength}
    payload = {k: v for k, v in options.items() if v is not None}
    if a.init_image:
        payload["init_images"] = [_image_base64(a.init_image, "--init-image")]
        if a.mask:
            payload["mask"] = _image_base64(a.mask, "--mask")
    return payload


def save_images(generation, out_dir: str) -> List[dict]:
    """PNGs as they came (infotext in their parameters chunk) named <seed>-<index>.png; never over another file."""
    from pathlib import Path

    from .generation import png_parameters

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = generation.info.get("all_seeds") or []
    saved = []
    for index, png in enumerate(generation.images):
        seed = seeds[index] if index < len(seeds) else generation.info.get("seed", "image")
        path, n = folder / f"{seed}-{index}.png", 1
        while path.exists():
            n += 1
            path = folder / f"{seed}-{index}-{n}.png"
        path.write_bytes(png)
        saved.append({"path": str(path), "seed": seed, "infotext": png_parameters(png)})
    return saved


def cmd_generate(cli: Cli) -> int:
    from .generation import invoke, resolve_models

    a = cli.args
    payload = generate_payload(a)
    models = resolve_models(cli.aws, a.checkpoint, a.vae, [a.prompt], [a.negative_prompt or ""])
    cli.watch_ctrl_c("Stopping the wait for the answer")
    generation = invoke(cli.aws, a.endpoint, "img2img" if a.init_image else "txt2img", payload, models,
                        on_state=lambda state, message: print(f"{a.endpoint}: {message}", file=sys.stderr, flush=True),
                        cancel=cli.cancel, timeout=a.timeout)
    saved = save_images(generation, a.out)
    cli.out(saved, lambda items: "\n".join(item["path"] for item in items) or "(no images)")
    return EXIT_OK


def cmd_local(cli: Cli) -> int:
    from .local.emulator import LocalEmulator
    from .local.run import run_local

    return run_local(LocalEmulator(port=cli.args.port, runtime=True), cli.args.bucket)


def cmd_ui(cli: Cli) -> int:
    try:
        from .ui.standalone import serve
    except ImportError as exc:
        raise UserError(f"The tab needs gradio: pip install -e '.[ui]' ({exc}).") from None
    a = cli.args
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    flags = {"region": a.region, "profile": a.profile, "bucket": a.bucket}
    serve(a.host, a.port, a.models_dir, a.allow_private_urls, a.local, flags, auth)
    return EXIT_OK


def cmd_serve(cli: Cli) -> int:
    try:
        from .serve.server import main as serve_main
    except ImportError as exc:
        raise UserError(f"The inference server needs its requirements: bash container/install.sh ({exc}).") from None
    a = cli.args
    return serve_main(a.host, a.port, a.cache_dir, a.cache_gb)


# -- parser -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .serve.request import FORM_SAMPLER  # torch-free: the request contract client and server share

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
    c = command(models, "upload", cmd_models_upload, "upload model files or folders from this machine")
    c.add_argument("--type", required=True, help=type_help)
    c.add_argument("paths", nargs="+", metavar="PATH")
    c = command(models, "upload-url", cmd_models_upload_url, "stream downloads straight into S3")
    c.add_argument("--type", required=True, help=type_help)
    c.add_argument("--description", help="a JSON object kept with each model")
    c.add_argument("--allow-private", action="store_true", help="allow loopback and private-network URLs")
    c.add_argument("urls", nargs="+", metavar="URL")
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
