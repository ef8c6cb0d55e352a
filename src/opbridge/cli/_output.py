"""Terminal output of the command line, all through `rich`: text, tables, errors.

Consoles are made per call (tests and users redirect ``sys.stdout``); off a terminal
they neither wrap lines nor colour them, so the output stays one record per line for
``grep`` and logs. Text is never parsed as rich markup: model and op names contain
brackets.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["error", "print_table", "say", "stderr", "stdout"]

# Wide enough that no table cell wraps when the output goes to a file or a pipe.
_FILE_WIDTH = 240


def _console(stream: IO[str]) -> Console:
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    return Console(
        file=stream,
        width=None if interactive else _FILE_WIDTH,
        soft_wrap=True,
        highlight=False,
        markup=False,
        emoji=False,
    )


def stdout() -> Console:
    """A console on the current ``sys.stdout``."""
    return _console(sys.stdout)


def stderr() -> Console:
    """A console on the current ``sys.stderr``."""
    return _console(sys.stderr)


def say(*lines: Any) -> None:
    """Prints each line (a string or any rich renderable) on stdout."""
    console = stdout()
    for line in lines:
        console.print(line)


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None
) -> None:
    """Prints a borderless table on stdout."""
    table = Table(*columns, title=title, box=None, pad_edge=False, title_justify="left")
    for row in rows:
        table.add_row(*row)
    stdout().print(table)


def error(command: str | None, message: str) -> None:
    """Prints ``opbridge COMMAND: error: MESSAGE`` on stderr, on one line."""
    prefix = f"opbridge {command}: " if command else "opbridge: "
    line = Text(prefix)
    line.append("error", style="bold red")
    line.append(f": {message}")
    stderr().print(line)
