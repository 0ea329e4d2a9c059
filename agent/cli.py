"""The ``geoagent`` command: index, galleries, locate, chat, eval.

Every error a user can cause ends as one line on stderr (``error: ...``) and
exit status 2; nothing already stored is touched by a failed command.

Start-up is kept short: this module imports only typer and the console; torch,
chromadb and the model client load inside the command that needs them, after its
inputs are checked, under a status line. ``eval`` is mounted on first use
(``GeoagentGroup``), so that ``agent`` never imports ``eval`` at module level.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from agent.console import err, fail_cleanly, out

# ---- the command group: lazy ``eval``, no type labels ---------------------------------

LAZY_GROUPS = {"eval": ("eval.cli", "eval_app")}


TYPE_WORDS = {"path": "PATH", "int": "N", "int range": "N", "float": "NUMBER", "float range": "NUMBER", "str": "TEXT"}


def _label(typer_label: str, param) -> str:
    """What help shows after an option's name: PATH, N, a|b, ... or nothing for a flag or argument."""
    if param.param_type_name == "argument" or getattr(param, "is_flag", False):
        return ""  # a flag takes no value; an argument's name already says what it is
    word = typer_label.strip("<>")
    if word.startswith("list[") and word.endswith("]"):  # a repeatable option: one value each time
        word = word[5:-1]
    return TYPE_WORDS.get(word, word if "|" in word else word.upper())


def _relabel(params: list) -> list:
    for param in params:
        if not getattr(param, "_relabelled", False):
            typer_label = param.display_type
            param.display_type_rich = lambda ctx, p=param, f=typer_label: _label(f(ctx), p)
            param._relabelled = True
            if param.param_type_name == "argument":
                param.metavar = param.name.upper()
    return params


def _drop_type_labels(cmd) -> None:
    """Help shows ``--store PATH``, never typer's ``<path>`` / ``<bool>`` type labels."""
    if not getattr(cmd, "_relabelled", False):
        # get_params, not .params: it also returns the --help option click makes on each call.
        get_params = cmd.get_params
        cmd.get_params = lambda ctx: _relabel(get_params(ctx))
        cmd._relabelled = True
    for sub in getattr(cmd, "commands", {}).values():
        _drop_type_labels(sub)


class GeoagentGroup(TyperGroup):
    """The root group: mounts ``eval`` on first use and drops type labels from help."""

    def list_commands(self, ctx) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_GROUPS if n not in self.commands)]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in LAZY_GROUPS and cmd_name not in self.commands:
            import importlib

            module, attr = LAZY_GROUPS[cmd_name]
            self.add_command(typer.main.get_command(getattr(importlib.import_module(module), attr)), cmd_name)
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _drop_type_labels(cmd)
        return cmd

    def format_help(self, ctx, formatter) -> None:
        _drop_type_labels(self)
        super().format_help(ctx, formatter)


app = typer.Typer(
    name="geoagent",
    cls=GeoagentGroup,
    help="Predict where a photo was taken (retrieval-augmented VLM geolocation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("geoagent")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"geoagent {version()}")
        raise typer.Exit()


@app.callback()
def root(
    show_version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Predict where a photo was taken (retrieval-augmented VLM geolocation)."""


# ---- options shared by commands ----------------------------------------------------------

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Embedded Chroma directory (default: $GEOAGENT_STORE, else the user data dir).")
]
ChromaUrlOpt = Annotated[
    str | None, typer.Option("--chroma-url", help="Chroma server http://HOST:PORT instead of --store (default: $GEOAGENT_CHROMA_URL).")
]
CollectionOpt = Annotated[str, typer.Option("--collection", help="Gallery collection name.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name at the OpenAI-compatible endpoint (default: $GEOAGENT_MODEL; none = retrieval only).")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL, else OpenAI).")]
SettingsOpt = Annotated[Path | None, typer.Option("--settings", help="Settings TOML file, keys as in README 'Settings keys' (default: $GEOAGENT_CONFIG).")]
SystemOpt = Annotated[str | None, typer.Option("--system", help="A system preset by name (retrieval-only, zero-shot, img2loc, g3, ...) or a YAML file; flags override it (default: none, the settings as given).")]
EncoderOpt = Annotated[str | None, typer.Option("--encoder", help="Query encoder; must be the one that built the gallery (default: the gallery's own).")]


def load_settings(settings_file: Path | None, system: str | None, **flags):
    """Defaults < TOML file (--settings or $GEOAGENT_CONFIG) < environment < --system preset < flags."""
    from agent.settings import Settings

    base = Settings.load(settings_file)
    if system:
        # Presets live with the benchmark configs (eval/configs): imported here, on use only.
        from eval.systems import load_system

        base = load_system(system).settings(base)
    return base.replace(**{k: v for k, v in flags.items() if v is not None})


def build_agent(settings):
    """A ``GeoAgent``, under a status line on stderr while the encoder, gallery and model load."""
    with err.status("loading the encoder, gallery and model client...", spinner="dots"):
        from agent.api import GeoAgent

        return GeoAgent.from_settings(settings)


# ---- index / galleries (progress bars) ---------------------------------------------------


def progress_bar(description: str):
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

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "-- img/s", style="progress.data.speed")

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
    workers: Annotated[int | None, typer.Option("--workers", min=0, max=256, help="Decoding processes (default: cores - 1, or 0 on 2 cores or fewer; 0: decode in a thread of the encoder's process).")] = None,
    vectors: Annotated[Path | None, typer.Option("--vectors", help="Precomputed vectors instead of photos: Parquet with id,lat,lon,vector, or .npy with SOURCE a CSV of id,lat,lon.")] = None,
    ray: Annotated[str | None, typer.Option("--ray", help="Embed on a Ray cluster: local | auto | ray://HOST:PORT (needs pip install 'geoagent\\[ray]' and --chroma-url).")] = None,
    errors: Annotated[Path | None, typer.Option("--errors", help="Where to write skipped entries (CSV). Default: <collection>-index-errors.csv in the store folder (the user data dir with --chroma-url)")] = None,
    gps_gallery: Annotated[bool, typer.Option("--gps-gallery", help="Also embed GeoCLIP's 100K GPS gallery into the store (once).")] = False,
) -> None:
    """Build or extend a gallery: embed every photo not yet stored (or import precomputed vectors)."""
    import warnings

    from rag_store import Gallery, build_gps_gallery, create_encoder, default_store_dir, open_client
    from rag_store.errors import ConfigError, SourceError
    from rag_store.outputs import check_writable

    if source is None and vectors is None and not gps_gallery:
        raise SourceError("give a SOURCE to index, --vectors FILE, or --gps-gallery")
    errors_file = errors or (default_store_dir() if chroma_url or not store else store.expanduser()) / f"{collection}-index-errors.csv"
    check_writable(errors_file, what="errors file")  # before any photo is embedded

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
    from rag_store.errors import GalleryNotFound

    try:
        rows = list_galleries(open_client(store, chroma_url, create=False))
    except GalleryNotFound:  # no store folder yet: nothing to list, and nothing is created
        rows = []
    if not rows:
        out.print("no galleries: build one with `geoagent index SOURCE`")
    for row in rows:
        out.print(f"{row['name']}\t{row['kind']}\t{row['encoder']}\t{row['dim']}-d\t{row['count']} entries", highlight=False, soft_wrap=True)


# ---- locate ------------------------------------------------------------------------------


def _locate_help() -> str:
    from agent.prediction import CONFIDENCE_MEANING

    return (
        "Locate photos: place, coordinates, confidence, reasoning, clues and candidates.\n\n"
        "PHOTOS are files, folders (every photo inside, recursively) or http(s) URLs. "
        "With --out the predictions go to a CSV or JSONL file as they finish; a re-run skips "
        "the photos already in it. Exit status 1 when some photo got no answer.\n\n"
        + CONFIDENCE_MEANING[0].upper() + CONFIDENCE_MEANING[1:]
    )


@app.command(help=_locate_help())
@fail_cleanly
def locate(
    photos: Annotated[list[str] | None, typer.Argument(help="Photos: files, folders or http(s) URLs.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write predictions to FILE.csv or FILE.jsonl as they finish; resumes a file a stopped run left (default: cards on stdout).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per photo instead of the card.")] = False,
    map_file: Annotated[Path | None, typer.Option("--map", help="Write an HTML map of the answers, candidates and neighbours; works offline (default: no map).")] = None,
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON schema of a prediction and exit.")] = False,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Gallery collection name (default: gallery).")] = None,
    encoder: EncoderOpt = None,
    k: Annotated[int | None, typer.Option("--k", min=0, help="Similar and dissimilar neighbours retrieved (default: 16).")] = None,
    ignore_exif: Annotated[bool, typer.Option("--ignore-exif", help="Do not answer from EXIF GPS.")] = False,
    settings_file: SettingsOpt = None,
    system: SystemOpt = None,
) -> None:
    import json as _json

    if schema:
        from agent.prediction import json_schema

        typer.echo(_json.dumps(json_schema(), indent=2, ensure_ascii=False))
        return
    from agent.batch import expand_inputs

    inputs = expand_inputs(photos or [])  # checked before anything heavy loads
    if map_file:
        from rag_store.outputs import check_writable

        check_writable(map_file, what="map")  # before any model call is paid for
    settings = load_settings(
        settings_file, system, model=model, base_url=base_url, store=str(store) if store else None,
        chroma_url=chroma_url, collection=collection, encoder=encoder, k=k, ignore_exif=ignore_exif or None,
    )
    agent = build_agent(settings)
    if out_file is not None:
        from agent.batch import locate_to_file

        summary = locate_to_file(agent, inputs, out_file, console=err)
        err.print(summary.line(), highlight=False, soft_wrap=True)
        predictions = summary.predictions
    else:
        predictions = agent.locate_many(inputs) if len(inputs) > 1 else [agent.locate(inputs[0])]
        for p in predictions:
            if json_out:
                print(_json.dumps(p.to_dict(), ensure_ascii=False))
            else:
                from agent.console import print_card

                print_card(p)
    if map_file:
        from agent.maps import write_map

        write_map(predictions, map_file)
        err.print(f"map written to {map_file}", highlight=False, soft_wrap=True)
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
    collection: Annotated[str | None, typer.Option("--collection", help="Gallery collection name (default: gallery).")] = None,
    encoder: EncoderOpt = None,
    allow_network: Annotated[bool, typer.Option("--allow-network", help="Let the model geocode place names online (Nominatim).")] = False,
    settings_file: SettingsOpt = None,
    system: SystemOpt = None,
) -> None:
    """Work a photo interactively: /locate, then ask the model follow-up questions (/help inside)."""
    if image is not None:
        from agent.batch import expand_inputs

        expand_inputs([image])  # a missing photo is reported before the models load
    settings = load_settings(
        settings_file, system, model=model, base_url=base_url, store=str(store) if store else None,
        chroma_url=chroma_url, collection=collection, encoder=encoder, allow_network=allow_network or None,
    )
    agent = build_agent(settings)
    from agent.chat import run_chat

    run_chat(agent, image)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # python -m agent.cli
    main()
