"""What the tab needs from its host (the WebUI or the standalone launcher), and how handlers report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import gradio as gr

from ..core.aws import Aws
from ..core.config import Settings
from ..core.errors import UserError
from ..core.text import Pace, size_text

log = logging.getLogger("sd_webui_sagemaker")

GRADIO_4 = int(gr.__version__.split(".")[0]) >= 4


def js(code: str) -> dict:
    """The keyword that runs browser code on an event: `_js` in gradio 3, `js` in gradio 4."""
    return {"js": code} if GRADIO_4 else {"_js": code}


@dataclass
class TabContext:
    """The host's view: settings read fresh on every click (the WebUI's can change), and model folders."""

    settings: Callable[[], Settings]
    # folders a path typed into "from WebUI" may reach; empty: nothing may be uploaded from disk
    model_folders: Callable[[], List[str]] = lambda: []
    # Sync all: (type id, folder) pairs to walk (the WebUI's own folders per type), and the sha256 cache to use;
    # None: the model folders, each a WebUI root, models folder or type folder, and our own cache file
    sync_folders: Optional[Callable[[], List[Tuple[str, str]]]] = None
    hash_cache: Optional[Callable[[], object]] = None
    _cache: Dict[str, Aws] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def aws(self) -> Aws:
        """One session per distinct settings and credential sources, so clients and their pools are reused."""
        settings = self.settings()
        key = settings.json() + credential_sources()
        with self._lock:
            if key not in self._cache:
                self._cache.clear()
                self._cache[key] = Aws(settings)
            return self._cache[key]


def credential_sources() -> str:
    """A digest of where boto3 finds credentials: the AWS_* environment and the AWS config files' mtimes.

    A session (and its clients) keeps the credentials it found first, or their absence: without this, keys removed
    or added in the environment, or `aws configure` run after an error, would not count until a restart.
    """
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
    files = []
    for var, default in (("AWS_CONFIG_FILE", "~/.aws/config"), ("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")):
        path = os.path.expanduser(os.environ.get(var) or default)
        try:
            files.append((path, os.stat(path).st_mtime_ns))
        except OSError:
            files.append((path, None))
    return hashlib.sha256(repr((env, files)).encode()).hexdigest()


def message(exc: BaseException) -> str:
    """The sentence a person sees; an unexpected failure is logged with its traceback, never shown."""
    if isinstance(exc, UserError):
        return f"Error: {exc}"
    log.exception("Amazon SageMaker tab: unexpected failure")
    return f"Error: unexpected {type(exc).__name__}: {exc} (details in the WebUI's console)."


def handled(fn: Callable) -> Callable:
    """A click handler whose failure becomes a message in its first output, never a frozen spinner."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the user as text
            return message(exc)
    wrapper.__name__ = fn.__name__
    return wrapper


def run_with_progress(work: Callable[[Callable, threading.Event], object], render: Callable[[dict], str],
                      finish: Callable[[object], str], every: float = 0.5) -> Iterator[str]:
    """Run `work(progress, cancel)` in a thread, yielding a rendered progress text until it ends.

    Generators need the queue (the WebUI and our launcher both enable it); the last text is `finish(result)`.
    """
    state: Dict[str, object] = {}
    outcome: Dict[str, object] = {}
    cancel = threading.Event()

    def progress(p) -> None:
        state[p.item] = p

    def target() -> None:
        try:
            outcome["result"] = work(progress, cancel)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="sagemaker-tab-work", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(every)
            if state and thread.is_alive():
                yield render(dict(state))
    except GeneratorExit:  # the page went away or the user pressed stop: stop cleanly (uploads stay resumable)
        cancel.set()
        raise
    if "error" in outcome:
        yield message(outcome["error"])  # type: ignore[arg-type]
    else:
        yield finish(outcome.get("result"))


def progress_lines(pace: Optional[Pace] = None) -> Callable[[dict], str]:
    """A renderer for run_with_progress: a line per item, with its speed and time left while it moves."""
    pace = pace or Pace()

    def render(state: dict) -> str:
        lines = []
        for p in state.values():
            pct = f"{100 * p.done / p.total:.0f}%" if p.total else ""
            moving = pace.text(p.item, p.done, p.total) if p.state == "uploading" else ""
            shown = f"{size_text(p.done)}, {moving}" if moving else size_text(p.done)
            lines.append(f"{p.item}: {p.state} {pct} ({shown})".replace("  ", " "))
        return "\n".join(lines)
    return render


def result_lines(results) -> str:
    """One line per uploaded item, as the CLI prints it."""
    lines = []
    for r in results:
        if r.ok:
            what = f" ({r.detected})" if getattr(r, "detected", None) else ""  # what its header said: under Auto, where it went
            lines.append(f"{r.item}: {r.status}{what}, {size_text(r.size)}, sha256 {r.sha256}")
        else:
            lines.append(f"{r.item}: {r.status}: {r.reason}")
    return "\n".join(lines) or "Nothing to upload."


def choice_update(choices: list, value: Optional[str] = None, first: bool = True):
    """New choices keeping `value` if still there; else the first one, or (first=False: lists a Delete acts on)
    nothing, so that no click deletes what the user never picked."""
    fallback = choices[0] if choices and first else None
    return gr.update(choices=choices, value=value if value in choices else fallback)


def confirm_delete(question: str) -> dict:
    """Browser code for a Delete click: asks `question` ({} is the chosen item) and sends "" when the user says no
    (handlers answer NOT_DELETED); with nothing chosen it asks nothing."""
    return js("(...args) => { if (args[0] && !confirm(%s.replace('{}', args[0]))) args[0] = ''; return args; }"
              % json.dumps(question))


NOT_DELETED = "Not deleted."
