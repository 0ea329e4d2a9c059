"""What every ``geoagent`` command shares on the terminal: the two consoles and the error rule."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.markup import escape

from rag_store.errors import GeoagentError

err = Console(stderr=True)
out = Console()


def fail_cleanly(fn):
    """Turn a GeoagentError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GeoagentError as exc:
            # Escaped: a path or a model message may contain [brackets] that rich would parse.
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper
