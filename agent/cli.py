"""The ``geoagent`` command: index, locate, eval, chat.

Every error a user can cause ends as one line on stderr (``error: ...``) and
exit status 2; nothing already stored is touched by a failed command.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rag_store.errors import GeoagentError

app = typer.Typer(
    name="geoagent",
    help="Predict where a photo was taken (retrieval-augmented VLM geolocation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Embedded Chroma directory (default: user data dir).")
]
ChromaUrlOpt = Annotated[
    str | None, typer.Option("--chroma-url", help="Chroma server http://HOST:PORT instead of --store.")
]
CollectionOpt = Annotated[str, typer.Option("--collection", help="Gallery collection name.")]


def fail_cleanly(fn):
    """Turn a GeoagentError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GeoagentError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "-- img/s", style="progress.data.speed")


def progress_bar(description: str) -> Progress:
    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@app.command()
@fail_cleanly
def index(
    source: Annotated[
        Path | None,
        typer.Argument(help="A CSV with IMG_ID,LAT,LON (or id,latitude,longitude) or a folder of EXIF-tagged photos."),
    ] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Photo folder for a CSV SOURCE.")] = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    collection: CollectionOpt = "gallery",
    encoder: Annotated[str, typer.Option("--encoder", help="efficientnet-lite0 | clip[:ID|DIR] | streetclip | geoclip[:ID|DIR]")] = "efficientnet-lite0",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096)] = 32,
    errors: Annotated[Path | None, typer.Option("--errors", help="Where to write skipped entries (CSV). Default: <collection>-index-errors.csv")] = None,
    gps_gallery: Annotated[bool, typer.Option("--gps-gallery", help="Also embed GeoCLIP's 100K GPS gallery into the store (once).")] = False,
) -> None:
    """Build or extend a gallery: embed every photo not yet stored."""
    from rag_store import Gallery, build_gps_gallery, create_encoder, index_source, open_client
    from rag_store.errors import SourceError

    if source is None and not gps_gallery:
        raise SourceError("give a SOURCE to index, or --gps-gallery")
    client = open_client(store, chroma_url)
    if source is not None:
        enc = create_encoder(encoder)
        gallery = Gallery.open(client, collection, encoder_name=enc.name, dim=enc.dim, create=True)
        with progress_bar(f"indexing {source.name}") as bar:
            task = bar.add_task("index", total=None)
            summary = index_source(
                source,
                gallery,
                enc,
                images=images,
                batch_size=batch_size,
                errors_file=errors or Path(f"{collection}-index-errors.csv"),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        for line in summary.lines():
            out.print(line, highlight=False)
        out.print(f"gallery {collection!r}: {gallery.count()} entries ({enc.name}, {enc.dim}-d)", highlight=False)
    if gps_gallery:
        with progress_bar("GeoCLIP GPS gallery") as bar:
            task = bar.add_task("gps", total=None)
            g = build_gps_gallery(client, progress=lambda d, t: bar.update(task, completed=d, total=t))
        out.print(f"GPS gallery {g.name!r}: {g.count()} coordinates", highlight=False)


@app.command()
@fail_cleanly
def galleries(store: StoreOpt = None, chroma_url: ChromaUrlOpt = None) -> None:
    """List the galleries in a store."""
    from rag_store import list_galleries, open_client

    rows = list_galleries(open_client(store, chroma_url))
    if not rows:
        out.print("no galleries: build one with `geoagent index SOURCE`")
    for row in rows:
        out.print(f"{row['name']}\t{row['kind']}\t{row['encoder']}\t{row['dim']}-d\t{row['count']} entries", highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
