"""Commands on the bucket: setup, cleanup, models, datasets."""

from __future__ import annotations

import json
from typing import List

from ..core.text import size_text
from .output import EXIT_OK, Cli, table

def cmd_setup(cli: Cli) -> int:
    from ..core.bootstrap import setup

    result = setup(cli.aws, create_role=cli.args.create_role)
    cli.out(result, lambda r: "\n".join(filter(None, [
        f"Bucket {r.bucket} ({r.region}): {'created' if r.bucket_created else 'already there'}, CORS and lifecycle set.",
        r.role_arn and f"Execution role: {r.role_arn} ({'created' if r.role_created else 'already there'}).",
    ])))
    return EXIT_OK


def cmd_cleanup(cli: Cli) -> int:
    from ..core.cleanup import find_orphans, remove_orphans

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
    from ..core.models.uploads import upload_paths

    cli.watch_ctrl_c()
    return cli.results(upload_paths(cli.aws, cli.args.type, cli.args.paths, progress=cli.progress, cancel=cli.cancel,
                                    force=cli.args.force))


def cmd_models_upload_url(cli: Cli) -> int:
    from ..core.models.urls import upload_urls

    cli.watch_ctrl_c()
    allow = cli.args.allow_private or None
    return cli.results(upload_urls(cli.aws, cli.args.type, cli.args.urls, description=cli.args.description,
                                   allow_private=allow, progress=cli.progress, cancel=cli.cancel,
                                   force=cli.args.force))


def cmd_models_sync(cli: Cli) -> int:
    """Every model file of the model folders that the cloud lacks; one progress line on stderr for the whole sync."""
    import sys
    import time

    from ..core.models.localmodels import default_dirs, folders_from_dirs, standalone_cache
    from ..core.models.sync import item_line, progress_text, summary, sync_models
    from ..core.text import Pace
    from .output import EXIT_FAILED, error

    cli.watch_ctrl_c()
    dirs = cli.args.models_dir or default_dirs()
    folders, failures = folders_from_dirs(dirs, cli.args.type or ())
    pace, shown = Pace(), {"at": 0.0, "phase": ""}

    def progress(p) -> None:
        now, complete = time.monotonic(), p.files_done == p.files_total  # a phase's last line is always drawn
        if not sys.stderr.isatty() or (p.phase == shown["phase"] and not complete and now - shown["at"] < 0.2):
            return
        ended = shown["phase"] and p.phase != shown["phase"]  # keep the last line of the phase before
        shown.update(at=now, phase=p.phase)
        sys.stderr.write(("\n" if ended else "\r\033[K") + progress_text(p, pace)[:150])
        sys.stderr.flush()

    items = failures + sync_models(cli.aws, folders, dry_run=cli.args.dry_run, cache=standalone_cache(dirs),
                                   progress=progress, cancel=cli.cancel)
    if shown["phase"]:
        sys.stderr.write("\n")
    if cli.json:
        print(json.dumps([i.dict() for i in items], indent=2))
    for i in items:
        if not i.ok:
            error(f"{i.item}: {i.reason}")
        elif not cli.json and (cli.args.dry_run or i.status != "skipped"):
            print(item_line(i, cli.aws))
    if not cli.json:
        print(summary(items, cli.args.dry_run))
    return EXIT_OK if all(i.ok for i in items) else EXIT_FAILED


def cmd_models_list(cli: Cli) -> int:
    from ..core.models.catalog import list_models

    models = list_models(cli.aws, cli.args.type)
    cli.out(models, lambda ms: table([[m.type, m.name, size_text(m.size), m.last_modified] for m in ms],
                                     ["TYPE", "NAME", "SIZE", "UPLOADED"]))
    return EXIT_OK


def cmd_models_show(cli: Cli) -> int:
    from ..core.models.catalog import show_model

    model = show_model(cli.aws, cli.args.type, cli.args.name)
    cli.out(model, lambda m: "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict) else v}"
                                        for k, v in m.dict().items()))
    return EXIT_OK


def cmd_models_delete(cli: Cli) -> int:
    from ..core.models.catalog import delete_model

    delete_model(cli.aws, cli.args.type, cli.args.name)
    cli.out({"deleted": cli.args.name, "type": cli.args.type}, lambda d: f"Deleted {cli.args.name}.")
    return EXIT_OK


def dataset_text(d) -> str:
    lines = [f"{d.name}  {d.s3_uri}  {len(d.files)} files  created {d.created}"]
    if d.description:
        lines.append(f"  {d.description}")
    return "\n".join(lines)


def cmd_datasets_create(cli: Cli) -> int:
    from ..core.datasets import create_dataset

    dataset = create_dataset(cli.aws, cli.args.name, cli.args.files, cli.args.description or "")
    cli.out(dataset, lambda d: f"Complete Dataset {d.name} creation: {d.s3_uri}")
    return EXIT_OK


def cmd_datasets_list(cli: Cli) -> int:
    from ..core.datasets import list_datasets

    cli.out(list_datasets(cli.aws), lambda ds: "\n".join(dataset_text(d) for d in ds) or "(none)")
    return EXIT_OK


def cmd_datasets_show(cli: Cli) -> int:
    from ..core.datasets import show_dataset

    cli.out(show_dataset(cli.aws, cli.args.name), lambda d: dataset_text(d) + "\n" + "\n".join(
        f"  {f.name}  {f.size} bytes  sha256 {f.sha256}" for f in d.files))
    return EXIT_OK


def cmd_datasets_delete(cli: Cli) -> int:
    from ..core.datasets import delete_dataset

    delete_dataset(cli.aws, cli.args.name)
    cli.out({"deleted": cli.args.name}, lambda d: f"Deleted dataset {cli.args.name}.")
    return EXIT_OK
