"""Commands that run something in the foreground: the emulator, the standalone tab, the inference server."""

from __future__ import annotations

from ..core.errors import UserError
from .output import EXIT_OK, Cli

def cmd_local(cli: Cli) -> int:
    from ..local.emulator import LocalEmulator
    from ..local.run import run_local

    return run_local(LocalEmulator(port=cli.args.port, runtime=True), cli.args.bucket)


def cmd_ui(cli: Cli) -> int:
    try:
        from ..ui.standalone import serve
    except ImportError as exc:
        raise UserError(f"The tab needs gradio: pip install -e '.[ui]' ({exc}).") from None
    a = cli.args
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    flags = {"region": a.region, "profile": a.profile, "bucket": a.bucket}
    serve(a.host, a.port, a.models_dir, a.allow_private_urls, a.local, flags, auth)
    return EXIT_OK


def cmd_serve(cli: Cli) -> int:
    try:
        from ..serve.server import main as serve_main
    except ImportError as exc:
        raise UserError(f"The inference server needs its requirements: bash container/install.sh ({exc}).") from None
    a = cli.args
    return serve_main(a.host, a.port, a.cache_dir, a.cache_gb)
