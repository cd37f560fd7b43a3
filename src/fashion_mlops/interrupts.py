"""Ctrl-C / SIGTERM during a sweep, handled at safe points.

Inside `deferred()`, the first SIGINT or SIGTERM only records the request; the training loop and the
sweep call `check()` between steps and cells, which raises KeyboardInterrupt there, never in the middle
of an MLflow or TensorBoard write. A second signal raises at once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_requested: int | None = None


def _record(signum: int, frame: object) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {signum} (second)")
    _requested = signum


def raise_now(signum: int, frame: object) -> None:
    """Outside sweeps: SIGTERM behaves like Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested; cheap enough to call every training step."""
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {_requested}")


def install_deferred() -> None:
    """Defer SIGINT and SIGTERM to the next `check()` (for the rest of this process, e.g. a worker)."""
    signal.signal(signal.SIGINT, _record)
    signal.signal(signal.SIGTERM, _record)


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, signals are deferred to `check()`; the previous handlers come back afterwards."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    install_deferred()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def stop_when_parent_dies(poll_s: float = 1.0) -> threading.Event:
    """In a child process: SIGTERM this process once its parent has died (a signal, unlike a flag, also interrupts
    a read blocked on a half-sent message). The returned event is set just before the signal."""
    died = threading.Event()

    def watch() -> None:
        parent = mp.parent_process()
        while parent is not None and parent.is_alive():
            time.sleep(poll_s)
        died.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()
    return died
