"""Progress on stderr: a spinner for work of unknown length, a bar for counted work.

``progress`` serves builds, the header download and long exports; ``progress_bar``
serves counted work (verifying many input sets, comparing intermediate values).

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
from collections.abc import Callable, Iterator

__all__ = ["progress", "progress_bar"]

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


Update = Callable[[str, int, int], None]


@contextlib.contextmanager
def progress_bar(enabled: bool | None = None) -> Iterator[Update | None]:
    """Yields ``update(description, done, total)``, or ``None`` when nothing is shown.

    Args:
        enabled: ``None`` shows the bar only when stderr is a terminal.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    console = Console(stderr=True)
    if enabled is False or (enabled is None and not console.is_terminal):
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def update(description: str, done: int, total: int) -> None:
            task = tasks.get(description)
            if task is None:
                task = tasks[description] = progress.add_task(description, total=total)
            progress.update(task, completed=done, total=total)

        yield update
