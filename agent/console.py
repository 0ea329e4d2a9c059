"""What every ``geoagent`` command shares on the terminal: the two consoles, the error rule,
clean model text, and the result card of ``locate`` and ``chat``.

Model text (places, clues, reasoning, errors that quote a reply) is untrusted: it may hold
terminal escape sequences that recolour, retitle or rewrite the terminal, and ``[brackets]``
that rich would read as markup. Everything printed from it goes through ``clean_text``
(control characters and escape sequences removed) and, inside markup, ``escape``.
"""

from __future__ import annotations

import functools
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import typer
from rich.console import Console
from rich.markup import escape

from rag_store.errors import GeoagentError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .prediction import Prediction

err = Console(stderr=True)
out = Console()

# ESC-introduced sequences (CSI "ESC [ ... final", OSC "ESC ] ... BEL|ST", two-byte escapes),
# then any C0/C1 control character left (keeping newline and tab), and the bidirectional
# overrides that make text display in another order than it reads ("Trojan Source").
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: object) -> str:
    """``text`` as a string safe to print: no escape sequences or control characters (tabs become spaces)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text))).replace("\t", " ")


def safe(text: object) -> str:
    """``clean_text`` and escaped for rich markup: model text inside a markup string."""
    return escape(clean_text(text))


def short_name(label: str, width: int = 48) -> str:
    """A readable name for a photo: the file name (or URL host + file name), its middle elided."""
    label = clean_text(label)
    parsed = urlparse(label)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        name = f"{parsed.netloc}/…/{PurePosixPath(parsed.path).name}" if parsed.path.strip("/") else parsed.netloc
    else:
        name = PurePosixPath(label.replace("\\", "/")).name or label
    if len(name) <= width:
        return name
    stem, dot, ext = name.rpartition(".")
    keep_end = (len(ext) + 1 + 8) if dot and len(ext) <= 5 else 12
    return name[: width - keep_end - 1] + "…" + name[-keep_end:]


def fail_cleanly(fn):
    """Turn a GeoagentError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GeoagentError as exc:
            # Escaped: a path or a model message may contain [brackets] that rich would parse.
            err.print(f"[red]error:[/red] {safe(exc)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


# ---- the result card ---------------------------------------------------------------------

OUTCOME_WORDS = {"ok": "answered", "refused": "refused", "unparseable": "unreadable", "error": "failed"}


def model_calls_line(outcomes: dict[str, int]) -> str:
    """``"4 asked: 3 answered, 1 refused"`` from ``Prediction.model_outcomes``."""
    asked = sum(outcomes.values())
    parts = [f"{outcomes[o]} {word}" for o, word in OUTCOME_WORDS.items() if outcomes.get(o)]
    return f"{asked} asked: " + ", ".join(parts) if asked else "none asked"


def result_card(p: Prediction, max_candidates: int = 6) -> RenderableType:
    """A readable result (a rich Panel), shared by ``locate`` and ``chat``.

    The geocoded place heads it (the model's own wording follows as what the model said);
    then coordinates, confidence and its meaning, notes (EXIF, exact gallery match,
    retrieval-only, fallback), the model calls' outcomes, reasoning, clues and the top
    candidates with their place, distance from the answer, origin and score.
    """
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    from . import geo
    from .prediction import CONFIDENCE_MEANING

    title = safe(short_name(p.image)) if p.image else "photo"
    calls = f"model calls: {model_calls_line(p.model_outcomes)}" if p.model_outcomes else ""
    if p.latitude is None or p.longitude is None:
        body = f"[red]no answer[/red] ({safe(p.status)}): {safe(p.error or 'no detail')}"
        return Panel(body + (f"\n{calls}" if calls else ""), title=title, title_align="left")
    lines = [f"[bold]{safe(p.place or 'unknown place')}[/bold]"]
    if p.model_place:
        own = f" (its own confidence {p.model_confidence:.0%})" if p.model_confidence is not None else ""
        lines.append(f"the model said: “{safe(p.model_place)}”{own}")
    conf = f"{p.confidence:.0%}" if p.confidence is not None else "n/a"
    lines.append(
        f"{p.latitude:.5f}, {p.longitude:.5f}   confidence [bold]{conf}[/bold]   source {safe(p.source)}"
        + (f"   verification {safe(p.verification)}" if p.verification and p.verification != p.source else "")
        + (f"   model {safe(p.model)}" if p.model else "")
    )
    lines.append(f"[dim]{escape(CONFIDENCE_MEANING)}[/dim]")
    if p.source == "exif":
        lines.append("[green]from the photo's EXIF GPS tag[/green] (--ignore-exif to locate from the pixels)")
    if p.exact_match:
        lines.append(f"[yellow]exact gallery match:[/yellow] the gallery holds this very photo ({safe(p.exact_match)}); its coordinates are the answer")
    if p.source == "retrieval" and not p.model and p.llm_calls == 0 and not p.model_outcomes:
        lines.append("[dim]retrieval-only answer: no model configured (--model, --base-url)[/dim]")
    if p.error:
        lines.append(f"[yellow]{safe(p.error)}[/yellow]")
    if calls:
        lines.append(calls)
    body: list[RenderableType] = ["\n".join(lines)]
    if p.reasoning:
        body.append(f"\n[bold]reasoning[/bold]\n{safe(p.reasoning)}")
    if p.clues:
        body.append("\n[bold]clues[/bold]\n" + "\n".join(f"- {safe(c.text)}" for c in p.clues[:8]))
    if p.candidates:
        table = Table("candidate", "km from answer", "origin", "score", "votes", box=None, pad_edge=False,
                      title="[bold]top candidates[/bold]", title_justify="left")
        for c in p.candidates[:max_candidates]:
            km = float(geo.great_circle_km(p.latitude, p.longitude, c.latitude, c.longitude))
            place = safe(c.place) if c.place else f"{c.latitude:.3f}, {c.longitude:.3f}"
            table.add_row(place, f"{km:,.0f}", safe(c.origin), f"{c.score:.3f}" if c.score is not None else "-",
                          str(c.votes) if c.origin == "llm" else "")
        body += ["", table]
    subtitle = f"{p.llm_calls} model requests, {p.latency_s:.2f} s"
    return Panel(Group(*body), title=title, title_align="left", subtitle=subtitle, subtitle_align="right")


def print_card(p: Prediction) -> None:
    """Print ``result_card(p)`` on stdout."""
    out.print(result_card(p), highlight=False)
