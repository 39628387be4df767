"""Requests this process sent to endpoints that may still be running there: in flight, or stopped by the user.

Stopping is not always the end of a request where it runs: a real-time call cannot be withdrawn, and an async one
may have started before its input was deleted. A later request to the same endpoint then waits behind it, and its
waiting text says so. Only what this process knows is counted: other clients' requests are not.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

# SageMaker's default InvocationTimeoutSeconds for async requests (deploy keeps it): a request that was dequeued by
# the end of its TTL has finished or failed this much later.
ASYNC_RUN_LIMIT = 15 * 60.0


@dataclass(eq=False)
class Sent:
    endpoint: str
    number: int  # in the order sent
    output: Optional[str] = None  # async: where its answer and its failure land
    failure: Optional[str] = None
    stopped: bool = False  # nobody waits for it any more
    takes_turn: bool = True  # False: withdrawn before any instance could start it
    until: float = float("inf")  # time.monotonic() after which AWS cannot be running it


_lock = threading.Lock()
_sent: List[Sent] = []
_numbers = itertools.count()


def sent(endpoint: str) -> Sent:
    """A request on its way to the endpoint; over() once it is answered, or left to ahead() once stopped."""
    now = time.monotonic()
    with _lock:
        _sent[:] = [e for e in _sent if e.until > now]  # stopped ones nobody looked at again
        entry = Sent(endpoint, next(_numbers))
        _sent.append(entry)
    return entry


def over(entry: Sent) -> None:
    with _lock:
        if entry in _sent:
            _sent.remove(entry)


def ahead(entry: Sent, landed: Callable[[Sent], bool]) -> int:
    """How many requests sent from here before `entry`, to its endpoint, are still running or waiting there.

    A stopped async request counts until `landed(it)` sees its answer or failure in S3 (deleting it: nobody reads
    it) or until it cannot be running any more; one withdrawn before it started is only looked up, not counted."""
    with _lock:
        earlier = [e for e in _sent if e.endpoint == entry.endpoint and e.number < entry.number]
    count = 0
    for e in earlier:
        if e.stopped and (time.monotonic() >= e.until or (e.output and landed(e))):
            over(e)
        elif e.takes_turn:
            count += 1
    return count


def forget() -> None:
    """Nothing is known to run anywhere any more (tests, after the emulator's reset)."""
    with _lock:
        _sent.clear()
