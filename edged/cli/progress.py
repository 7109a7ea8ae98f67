"""Progress display for long CLI work (hashing, uploads, indexing, closing epochs).

Bars and spinners are drawn with rich on stderr, never on stdout, so a command's
result on stdout is the same with or without them. Each long command takes
``--progress auto|always|never`` (environment: ``EDGED_PROGRESS``): ``auto``, the
default, draws only when stderr is a terminal; ``always`` draws even into a pipe
(as a terminal would see it); ``never`` draws nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

PROGRESS_MODES = ("auto", "always", "never")
PROGRESS_ENV = "EDGED_PROGRESS"
_MODE_KEY = "edged.cli.progress"  # where the chosen mode lives in click's ctx.meta

F = TypeVar("F", bound=Callable[..., Any])


def _remember_mode(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    ctx.meta[_MODE_KEY] = value
    return value


def progress_option(command: F) -> F:
    """The ``--progress`` option of a long-running command (read with ``progress_bars``)."""
    return click.option(
        "--progress", type=click.Choice(PROGRESS_MODES), default="auto", show_default=True,
        envvar=PROGRESS_ENV, show_envvar=True, expose_value=False, callback=_remember_mode,
        help="progress bars on stderr: auto (only on a terminal), always or never")(command)


def progress_console(mode: str) -> Console | None:
    """The stderr console progress is drawn on, or None when ``mode`` says not to."""
    if mode == "never" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    return Console(file=sys.stderr, force_terminal=True if mode == "always" else None)


class AmountColumn(ProgressColumn):
    """Bytes for tasks added with ``unit="bytes"``, else ``done/total`` counts."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()
        self._count = MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        column = self._bytes if task.fields.get("unit") == "bytes" else self._count
        return column.render(task)


def progress_bars(ctx: click.Context, *, transient: bool = False) -> Progress:
    """A rich ``Progress`` for the command: use it as a context manager and add tasks
    (``unit="bytes"`` for byte counts). Off (drawing nothing) when progress is off."""
    console = progress_console(ctx.meta.get(_MODE_KEY, "auto"))
    # stdout is never redirected into the display: it holds the command's result.
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TaskProgressColumn(), AmountColumn(), TimeElapsedColumn(),
                    console=console, disable=console is None, transient=transient,
                    redirect_stdout=False)


@contextmanager
def spinner(ctx: click.Context, description: str) -> Iterator[None]:
    """An indeterminate spinner on stderr while the block runs (work whose progress the
    daemon cannot report); it disappears when the block ends."""
    console = progress_console(ctx.meta.get(_MODE_KEY, "auto"))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, disable=console is None, transient=True,
                  redirect_stdout=False) as display:
        display.add_task(description, total=None)
        yield


def advancer(display: Progress, description: str, total: int | None, *,
             unit: str = "bytes") -> Callable[[int], None]:
    """The function that advances a task of ``display`` by ``n``. The task is added at the
    first call, so a step that never happens (an upload the daemon needs not) shows nothing."""
    task: TaskID | None = None

    def advance(n: int) -> None:
        nonlocal task
        if task is None:
            task = display.add_task(description, total=total, unit=unit)
        display.advance(task, n)

    return advance
