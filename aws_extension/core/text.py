"""Numbers as a person reads them in a message: sizes, counts, durations, transfer speed."""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple

UNITS = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def size_text(size: Optional[int]) -> str:
    """"1.5 GB", "3.2 MB", "4.0 KB", "512 bytes", "1 byte"; "" when unknown."""
    if size is None:
        return ""
    for unit, scale in UNITS:
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return count_text(size, "byte")


def count_text(count: int, word: str, plural: Optional[str] = None) -> str:
    """"1 image", "2 images" ("1 dataset", "3 datasets")."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


def duration_text(seconds: float) -> str:
    """"45 s", "3 min 5 s", "1 h 2 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class Pace:
    """Speed and time left of transfers, each measured from when its bytes started moving (a resumed upload's
    parts already in S3 count neither way)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start: Dict[str, Tuple[float, int]] = {}

    def text(self, item: str, done: int, total: Optional[int]) -> str:
        """"12.3 MB/s, 2 min 5 s left"; "" until a second of moving bytes has been seen."""
        now = self.clock()
        began, done_then = self.start.setdefault(item, (now, done))
        if now - began < 1.0 or done <= done_then:
            return ""
        speed = (done - done_then) / (now - began)
        left = f", {duration_text((total - done) / speed)} left" if total and total > done else ""
        return f"{size_text(int(speed))}/s{left}"
