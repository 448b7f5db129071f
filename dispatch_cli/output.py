"""Console output and the one place CLI commands turn project errors into exit codes.

On a terminal the output is rich (colour, tables fitted to the window). Anywhere else (piped,
redirected, in CI) it is plain text: no colour or control codes, and no line is ever wrapped,
so hashes and topic names stay whole on their line for grep and copy-paste.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Literal, NoReturn, TypeVar, get_args, get_origin

import typer
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.markup import escape

from dispatch_core.errors import DispatchError
from dispatch_core.rollout import POLICY_VERSION
from dispatch_core.settings import Settings, get_settings
from stack.errors import ServiceFailed

#: Plain output's width: wider than any line a command prints, so rich never wraps one.
PLAIN_WIDTH = 100_000


def _console(stderr: bool = False) -> Console:
    """Rich on a terminal; plain and unwrapped on anything else (decided once, as a process starts)."""
    if (sys.stderr if stderr else sys.stdout).isatty():
        return Console(stderr=stderr)
    # explicit, so FORCE_COLOR / TTY_COMPATIBLE / COLUMNS in a CI environment cannot turn it back on
    return Console(stderr=stderr, force_terminal=False, force_interactive=False, color_system=None,
                   width=PLAIN_WIDTH, soft_wrap=True)


console = _console()
errors = _console(stderr=True)

T = TypeVar("T")


def fail(message: str, detail: str = "") -> NoReturn:
    """One unwrapped line on stderr (plus optional dim detail), exit code 1."""
    errors.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    if detail:
        errors.print(escape(detail), style="dim", soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def reported() -> Iterator[None]:
    """A DispatchError raised inside becomes one error line and exit 1, not a traceback."""
    try:
        yield
    except ServiceFailed as exc:
        fail(str(exc), exc.log_tail)
    except DispatchError as exc:
        fail(str(exc))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a DispatchError becomes one line and exit 1, not a traceback."""
    with reported():
        return asyncio.run(coro)


def short(version: str) -> str:
    """A policy version (64 hex digits) as its first 12, like a short git hash; any other text whole."""
    return version[:12] if re.fullmatch(POLICY_VERSION, version) else version


def allowed(kind: Any) -> str:
    """What a constrained type accepts, in words: a Literal's choices, or its Field description."""
    if get_origin(kind) is Literal:
        *first, last = (str(choice) for choice in get_args(kind))
        return f"{', '.join(first)} or {last}" if first else last
    descriptions = [m.description for m in get_args(kind)[1:] if isinstance(m, FieldInfo) and m.description]
    return "; ".join(descriptions) or str(kind)


def check(option: str, kind: Any, value: Any) -> Any:
    """``value`` validated as ``kind``, the constrained type of the model field it will fill.

    Commands check their options this way before any I/O, so a bad value is one line naming
    the option and what it allows (exit 1), never pydantic's traceback from deep inside.
    """
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError:
        fail(f"{option} must be {allowed(kind)}, not {value!r}")


def read_settings() -> Settings:
    """The DISPATCH_* settings; a variable with a bad value is one error line naming it, exit 1."""
    try:
        return get_settings()
    except ValidationError as exc:
        fail("; ".join(f"DISPATCH_{str(e['loc'][0]).upper()}={e['input']!r}: {e['msg']}" for e in exc.errors()))
