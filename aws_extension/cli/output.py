"""What every command shares: the parsed arguments, the AWS session, output as text or JSON, progress, Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Callable, List

from ..core.text import Pace, size_text

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
            from ..core.aws import Aws
            from ..core.config import Settings

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
                    what = f"{r.detected}, " if getattr(r, "detected", None) else ""  # what its header said
                    print(f"{r.status}: {r.item} -> {self.aws.s3_uri(r.key)} ({what}{size_text(r.size)}, "
                          f"sha256 {r.sha256})")
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
