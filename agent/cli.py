"""The ``geoagent`` command: index, locate, eval, chat.

Every error a user can cause ends as one line on stderr (``error: ...``) and
exit status 2; nothing already stored is touched by a failed command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
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

app = typer.Typer(
    name="geoagent",
    help="Predict where a photo was taken (retrieval-augmented VLM geolocation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
from eval.cli import eval_app  # noqa: E402

app.add_typer(eval_app, name="eval")
from agent.console import err, fail_cleanly, out  # noqa: E402

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Embedded Chroma directory (default: user data dir).")
]
ChromaUrlOpt = Annotated[
    str | None, typer.Option("--chroma-url", help="Chroma server http://HOST:PORT instead of --store.")
]
CollectionOpt = Annotated[str, typer.Option("--collection", help="Gallery collection name.")]


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
        typer.Argument(help="A CSV with IMG_ID,LAT,LON (or id,latitude,longitude), a folder of EXIF-tagged photos, or webdataset tar shards ('shards/{00000..00099}.tar' or a folder of .tar). With --vectors FILE.npy: the CSV of id,lat,lon of its rows."),
    ] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Photo folder for a CSV SOURCE.")] = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    collection: CollectionOpt = "gallery",
    encoder: Annotated[str, typer.Option("--encoder", help="efficientnet-lite0 | clip[:ID|DIR] | streetclip | geoclip[:ID|DIR]; with --vectors: the encoder that made them")] = "efficientnet-lite0",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present) | cpu | cuda[:N] | mps. Half precision on CUDA.")] = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, max=4096, help="Photos per forward pass (default: 32 on CPU, 256 on CUDA, 64 on MPS).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, max=256, help="Decoding processes (default: cores - 1; 0: decode in the encoder's process).")] = None,
    vectors: Annotated[Path | None, typer.Option("--vectors", help="Precomputed vectors instead of photos: Parquet with id,lat,lon,vector, or .npy with SOURCE a CSV of id,lat,lon.")] = None,
    ray: Annotated[str | None, typer.Option("--ray", help="Embed on a Ray cluster: local | auto | ray://HOST:PORT (needs pip install 'geoagent\\[ray]' and --chroma-url).")] = None,
    errors: Annotated[Path | None, typer.Option("--errors", help="Where to write skipped entries (CSV). Default: <collection>-index-errors.csv")] = None,
    gps_gallery: Annotated[bool, typer.Option("--gps-gallery", help="Also embed GeoCLIP's 100K GPS gallery into the store (once).")] = False,
) -> None:
    """Build or extend a gallery: embed every photo not yet stored (or import precomputed vectors)."""
    import warnings

    from rag_store import Gallery, build_gps_gallery, create_encoder, open_client
    from rag_store.errors import ConfigError, SourceError

    if source is None and vectors is None and not gps_gallery:
        raise SourceError("give a SOURCE to index, --vectors FILE, or --gps-gallery")
    errors_file = errors or Path(f"{collection}-index-errors.csv")

    def label(text: str) -> str:
        # progress_bar's description is a format string and rich markup: a SOURCE such as
        # 'shards/{00000..00099}.tar' or '[raw].csv' must print as itself.
        from rich.markup import escape

        return escape(text).replace("{", "{{").replace("}", "}}")

    def report(summary, what: str, enc_name: str, dim: int) -> None:
        for line in summary.lines():
            out.print(line, highlight=False, soft_wrap=True)
        out.print(f"gallery {collection!r}: {what} ({enc_name}, {dim}-d)", highlight=False, soft_wrap=True)

    if vectors is not None:
        from rag_store.encoders import encoder_identity
        from rag_store.errors import EncoderMismatch
        from rag_store.ingest import index_vectors
        from rag_store.sources import read_vectors

        if ray is not None:
            raise ConfigError("--vectors needs no encoding: drop --ray")
        name, known_dim = encoder_identity(encoder)
        vs = read_vectors(vectors, source)
        if known_dim is not None and vs.dim != known_dim:
            raise EncoderMismatch(f"--vectors {vectors} holds {vs.dim}-d vectors, but {name} gives {known_dim}-d: name the encoder that made them with --encoder")
        gallery = Gallery.open(open_client(store, chroma_url), collection, encoder_name=name, dim=vs.dim, create=True)
        with progress_bar(label(f"importing {vectors.name}")) as bar:
            task = bar.add_task("vectors", total=None)
            summary = index_vectors(vs, gallery, errors_file=errors_file, progress=lambda d, t: bar.update(task, completed=d, total=t))
        report(summary, f"{gallery.count()} entries", name, vs.dim)
    elif source is not None and ray is not None:
        from rag_store.ray_index import index_with_ray

        if not chroma_url:
            raise ConfigError("--ray writes to a Chroma server that every Ray worker can reach: give --chroma-url")
        summary = index_with_ray(
            source, images=images, address=ray, chroma_url=chroma_url, collection=collection,
            encoder_name=encoder, device=device, batch_size=batch_size, errors_file=errors_file,
        )
        report(summary, f"{summary.gallery_count} entries", summary.encoder_name, summary.dim)
    elif source is not None:
        from rag_store import index_source, read_source

        # Read SOURCE and load the encoder before touching the store: a bad SOURCE creates nothing.
        prepared = read_source(source, images)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            enc = create_encoder(encoder, device=device)
        for w in caught:
            err.print(f"warning: {w.message}", highlight=False, markup=False, soft_wrap=True)
        gallery = Gallery.open(open_client(store, chroma_url), collection, encoder_name=enc.name, dim=enc.dim, create=True)
        with progress_bar(label(f"indexing {source.name}")) as bar:
            task = bar.add_task("index", total=None)
            summary = index_source(
                source, gallery, enc, images=images, batch_size=batch_size, workers=workers,
                errors_file=errors_file,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                prepared=prepared,
            )
        report(summary, f"{gallery.count()} entries", enc.name, enc.dim)
    if gps_gallery:
        client = open_client(store, chroma_url)
        with progress_bar("GeoCLIP GPS gallery") as bar:
            task = bar.add_task("gps", total=None)
            g = build_gps_gallery(client, progress=lambda d, t: bar.update(task, completed=d, total=t))
        out.print(f"GPS gallery {g.name!r}: {g.count()} coordinates", highlight=False, soft_wrap=True)


@app.command()
@fail_cleanly
def galleries(store: StoreOpt = None, chroma_url: ChromaUrlOpt = None) -> None:
    """List the galleries in a store."""
    from rag_store import list_galleries, open_client

    rows = list_galleries(open_client(store, chroma_url))
    if not rows:
        out.print("no galleries: build one with `geoagent index SOURCE`")
    for row in rows:
        out.print(f"{row['name']}\t{row['kind']}\t{row['encoder']}\t{row['dim']}-d\t{row['count']} entries", highlight=False, soft_wrap=True)


ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name at the OpenAI-compatible endpoint (default: $GEOAGENT_MODEL; none = retrieval only).")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings TOML file (default: $GEOAGENT_CONFIG).")]


def build_agent(config, **overrides):
    from agent.api import GeoAgent

    return GeoAgent.from_settings(config=config, **overrides)


def result_card(p):
    """A readable result: place, coordinates, confidence, candidates, key clues (a rich Panel).

    Shared by ``locate`` and ``chat``. Model text is escaped: a clue like "[STOP]" is text, not markup.
    """
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    title = escape(p.image)
    if p.latitude is None:
        return Panel(f"[red]no answer[/red] ({p.status}): {escape(p.error or '')}", title=title)
    conf = f"{p.confidence:.0%}" if p.confidence is not None else "n/a"
    head = (
        f"[bold]{escape(p.place or 'unknown place')}[/bold]\n"
        f"{p.latitude:.5f}, {p.longitude:.5f}   confidence {conf}   source {p.source}"
        + (f"   model {escape(p.model)}" if p.model else "")
        + (f"\n[yellow]{escape(p.error)}[/yellow]" if p.error else "")
        + ("\n[dim]retrieval-only answer: no model configured (--model, --base-url)[/dim]"
           if p.source == "retrieval" and not p.model and p.llm_calls == 0 else "")
    )
    table = Table("candidate", "origin", "lat, lon", "score", box=None, pad_edge=False)
    for c in p.candidates[:6]:
        table.add_row(escape(c.place[:40]) or "-", c.origin, f"{c.latitude:.4f}, {c.longitude:.4f}", f"{c.score:.3f}" if c.score is not None else "-")
    clues = "\n".join(f"- {escape(c.text)}" for c in p.clues[:6])
    body = [head, table]
    if clues:
        body.append("clues:\n" + clues)
    return Panel(Group(*body), title=title, subtitle=f"{p.llm_calls} LLM calls, {p.latency_s:.2f} s")


def print_card(p) -> None:
    """Print ``result_card(p)`` on stdout."""
    out.print(result_card(p), highlight=False)


@app.command()
@fail_cleanly
def locate(
    images: Annotated[list[str], typer.Argument(help="Photos: paths or http(s) URLs.")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per photo.")] = False,
    map_file: Annotated[Path | None, typer.Option("--map", help="Write a Leaflet map (HTML).")] = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    collection: CollectionOpt = "gallery",
    k: Annotated[int | None, typer.Option("--k", min=0, help="Similar and dissimilar neighbours retrieved.")] = None,
    ignore_exif: Annotated[bool, typer.Option("--ignore-exif", help="Do not answer from EXIF GPS.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Locate photos: coordinates, place, confidence, candidates and clues."""
    import json as _json

    agent = build_agent(
        config, model=model, base_url=base_url, store=str(store) if store else None,
        chroma_url=chroma_url, collection=collection, k=k, ignore_exif=ignore_exif or None,
    )
    predictions = agent.locate_many(images) if len(images) > 1 else [agent.locate(images[0])]
    for p in predictions:
        if json_out:
            print(_json.dumps(p.to_dict(), ensure_ascii=False))
        else:
            print_card(p)
    if map_file:
        from agent.maps import write_map

        write_map(predictions, map_file)
        err.print(f"map written to {map_file}")
    if any(not p.answered for p in predictions):
        raise typer.Exit(1)


@app.command()
@fail_cleanly
def chat(
    image: Annotated[str | None, typer.Argument(help="A photo to attach first: a path or an http(s) URL.")] = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    collection: CollectionOpt = "gallery",
    allow_network: Annotated[bool, typer.Option("--allow-network", help="Let the model geocode place names online (Nominatim).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Work a photo interactively: /locate, then ask the model follow-up questions (/help inside)."""
    from agent.chat import run_chat

    agent = build_agent(
        config, model=model, base_url=base_url, store=str(store) if store else None,
        chroma_url=chroma_url, collection=collection, allow_network=allow_network or None,
    )
    run_chat(agent, image)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # python -m agent.cli
    main()
