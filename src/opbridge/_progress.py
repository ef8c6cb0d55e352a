"""Progress for work that takes seconds: builds, the header download, long exports.

On a terminal, a `rich` spinner with the elapsed time shows on stderr while the work
runs and leaves one line saying how long it took. Elsewhere (logs, CI, captured
output) nothing is printed for work shorter than a second, then one line when it
starts and one when it ends, so logs stay short and greppable.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["progress"]

_QUIET_FOR_S = 1.0


@contextlib.contextmanager
def progress(message: str, *, quiet_for: float = _QUIET_FOR_S) -> Iterator[None]:
    """Shows ``opbridge: MESSAGE ...`` on stderr while the block runs longer than ``quiet_for``.

    Args:
        message: What is happening, e.g. ``"building mykernels"``.
        quiet_for: Seconds of silence before anything is shown.
    """
    stream = sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    start = time.monotonic()
    shown = threading.Event()
    lock = threading.Lock()
    status = None

    def show() -> None:
        nonlocal status
        with lock:
            if shown.is_set():
                return
            shown.set()
            if interactive:
                from rich.console import Console

                status = Console(file=stream).status(f"opbridge: {message} ...")
                status.start()
            else:
                print(f"opbridge: {message} ...", end="", file=stream, flush=True)

    timer = threading.Timer(quiet_for, show)
    timer.daemon = True
    timer.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        timer.cancel()
        with lock:
            if shown.is_set():
                elapsed = time.monotonic() - start
                outcome = "done" if ok else "failed"
                if status is not None:
                    status.stop()
                    print(f"opbridge: {message}: {outcome} in {elapsed:.1f}s", file=stream)
                else:
                    print(f" {outcome} in {elapsed:.1f}s", file=stream, flush=True)
            shown.set()  # a late timer shows nothing
