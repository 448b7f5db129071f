"""Console output and the one place CLI commands turn project errors into exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from dispatch_core.errors import DispatchError
from stack.errors import ServiceFailed

console = Console()
errors = Console(stderr=True)

T = TypeVar("T")


def fail(message: str, detail: str = "") -> NoReturn:
    """One unwrapped line on stderr (plus optional dim detail), exit code 1."""
    errors.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if detail:
        errors.print(escape(detail), style="dim", soft_wrap=True)
    raise typer.Exit(1)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a DispatchError becomes one line and exit 1, not a traceback."""
    try:
        return asyncio.run(coro)
    except ServiceFailed as exc:
        fail(str(exc), exc.log_tail)
    except DispatchError as exc:
        fail(str(exc))
