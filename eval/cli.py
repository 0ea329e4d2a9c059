"""``geoagent eval ...``: score prediction files and report benchmark runs.

Mounted by ``agent/cli.py`` as ``app.add_typer(eval_app, name="eval")``. Like every
geoagent command, an error a user can cause ends as one line on stderr
(``error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from agent.console import fail_cleanly

eval_app = typer.Typer(
    name="eval",
    help="Score predictions against a truth set and report benchmark runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@eval_app.command("score")
@fail_cleanly
def score_command(
    predictions: Annotated[Path, typer.Argument(help="Predictions CSV: IMG_ID,LAT_pred,LON_pred[,success|status].")],
    truth: Annotated[Path, typer.Option("--truth", help="Truth CSV: IMG_ID,LAT,LON[,country,region,city].")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file (default: none).")] = None,
    geography: Annotated[
        bool, typer.Option("--geography/--no-geography", help="Country / region / city accuracy (offline).")
    ] = True,
    resamples: Annotated[int, typer.Option("--resamples", min=10, help="Bootstrap resamples for the 95% CIs.")] = 1000,
) -> None:
    """Score any system's predictions CSV: every truth photo counts, unanswered ones as misses."""
    from eval.score import score

    result = score(predictions, truth, geography=geography, n_resamples=resamples)
    data = result.to_dict()
    if out is not None:
        _write(out, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else result.table())


@eval_app.command("report")
@fail_cleanly
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding results.jsonl (and run.json).")],
    prices: Annotated[
        Path | None, typer.Option("--prices", help="YAML price table: MODEL: {input: $/1M, output: $/1M} (default: the 2025 list prices built in).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    geography: Annotated[
        bool, typer.Option("--geography/--no-geography", help="Country / region / city accuracy (offline).")
    ] = True,
    maps: Annotated[bool, typer.Option("--maps/--no-maps", help="Draw a world map per config.")] = True,
) -> None:
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html."""
    from eval.metrics import load_prices
    from eval.report import build_report, summary

    table = load_prices(prices) if prices else None
    report = build_report(run_dir, prices=table, geography=geography, maps=maps)
    if as_json:
        typer.echo(json.dumps(summary(report), indent=2, ensure_ascii=False))
        return
    from eval.report import comparison_text

    typer.echo(comparison_text(report.metrics, report.dataset))
    typer.echo("")
    typer.echo(f"wrote {report.markdown}")
    typer.echo(f"wrote {report.html}")


def _write(path: Path, text: str) -> None:
    from rag_store.outputs import write_output

    write_output(path, text)


@eval_app.command("run")
@fail_cleanly
def run_command(
    run_file: Annotated[Path | None, typer.Argument(help="A run declared in YAML/TOML (dataset, systems, model, ...; flags override it), or with --resume the RUN_DIR of a stopped run.")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Truth CSV (with --images), an LLMGeo folder, or a folder of EXIF-tagged photos (default: the run file's).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Photo folder of a CSV dataset (default: the run file's).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name for the published anchors: im2gps3k, yfcc4k, ... (default: the file's name).")] = None,
    systems: Annotated[list[str] | None, typer.Option("--system", "--config", help="System preset name (retrieval-only, zero-shot, img2loc, g3, ...) or YAML file; repeat for a grid, results are listed in this order (default: retrieval-only).")] = None,
    settings_file: Annotated[Path | None, typer.Option("--settings", help="Settings TOML file under the presets (default: $GEOAGENT_CONFIG).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name at the OpenAI-compatible endpoint (default: $GEOAGENT_MODEL).")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="Embedded Chroma directory (default: $GEOAGENT_STORE, else the user data dir).")] = None,
    chroma_url: Annotated[str | None, typer.Option("--chroma-url", help="Chroma server http://HOST:PORT instead of --store (default: $GEOAGENT_CHROMA_URL).")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Gallery collection name (default: gallery).")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where results.jsonl, metrics.json and the report go (default: runs/DATASET-DATE-TIME).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="First N items (default: all).")] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="N items at random, with --seed (default: all).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of --sample (default: 0).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Items in flight (default: 8).")] = None,
    rate_limit: Annotated[float | None, typer.Option("--rate-limit", help="Model requests per second (default: no limit).")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Model reply cache (default: the user cache dir).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the reply cache.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped run: `--resume RUN_DIR` reads everything else from RUN_DIR/run.json.")] = False,
    allow_self_match: Annotated[bool, typer.Option("--allow-self-match", help="Let an item retrieve its own photo from the gallery (default: off, so the same id, the same file or a near-copy is left out).")] = False,
) -> None:
    """Run system presets over a dataset; every item is recorded as it finishes."""
    from agent.settings import Settings
    from eval.datasets import load_dataset
    from eval.runner import RunSpec, read_run_file, run
    from eval.systems import load_system
    from rag_store.errors import ConfigError

    if resume and run_file is not None and run_file.is_dir():
        # `--resume RUN_DIR`: the run's own record says what it was; flags may change only the pace.
        run_dir, declared = run_file, _recorded_invocation(run_file)
        run_file = None
        allow_self_match = allow_self_match or bool(declared.pop("allow_self_match", False))
    else:
        declared = read_run_file(run_file) if run_file else {"dataset": {}}
    ds = declared.pop("dataset")
    source = dataset or ds.get("source")
    if source is None:
        raise ConfigError("give a dataset: --dataset CSV --images DIR, or a run file")
    ds_args = {
        "source": str(source),
        "images": str(images) if images else ds.get("images"),
        "name": name or ds.get("name"),
        "kind": ds.get("kind"),
        "limit": limit if limit is not None else ds.get("limit"),
        "sample": sample if sample is not None else ds.get("sample"),
        "seed": seed if seed is not None else ds.get("seed", 0),
    }
    data = load_dataset(**ds_args)
    refs = systems or declared.pop("configs", None) or ["retrieval-only"]
    declared.pop("configs", None)
    base_dir = run_file.parent if run_file else declared.pop("base_dir", None)
    declared.pop("base_dir", None)
    loaded = [load_system(ref, base_dir=Path(base_dir) if base_dir else None) for ref in refs]
    if len({s.name for s in loaded}) != len(loaded):
        raise ConfigError(f"system names repeat: {', '.join(s.name for s in loaded)}")
    out_dir = run_dir or declared.pop("run_dir", None) or Path("runs") / f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    declared.pop("run_dir", None)
    n_parallel = concurrency or declared.pop("concurrency", None) or 8
    declared.pop("concurrency", None)
    cache = None if no_cache else str(cache_dir or declared.pop("cache_dir", None) or _default_cache_dir())
    declared.pop("cache_dir", None)
    flags = {"model": model, "base_url": base_url, "store": str(store) if store else None,
             "chroma_url": chroma_url, "collection": collection, "rate_limit": rate_limit}
    base = Settings.load(settings_file, **{**declared, **{k: v for k, v in flags.items() if v is not None}})
    # Benchmarks never read the answer from EXIF.
    base = base.replace(ignore_exif=True, cache_dir=cache, concurrency=n_parallel)
    recorded = {k: v for k, v in base.public_dict().items() if k not in ("cache_dir", "concurrency")}
    # Absolute paths, so that `--resume RUN_DIR` works from any folder.
    if recorded.get("store"):
        recorded["store"] = str(Path(recorded["store"]).expanduser().resolve())
    invocation = {
        "dataset": {**ds_args, **{k: str(Path(ds_args[k]).expanduser().resolve()) for k in ("source", "images") if ds_args[k]}},
        "configs": [_absolute_ref(r, base_dir) for r in refs],
        "settings": recorded,
        "concurrency": n_parallel,
        "allow_self_match": allow_self_match,
    }
    extra = {"dataset_kind": data.kind, "invocation": invocation, "setup": run_setup(base, data)}
    spec = RunSpec(Path(out_dir), data, loaded, base, concurrency=n_parallel, extra=extra,
                   allow_self_match=allow_self_match)
    typer.echo(f"run {spec.run_dir}: {len(data.samples)} items x {len(loaded)} systems ({', '.join(s.name for s in loaded)})", err=True)
    try:
        metrics = run(spec, resume=resume, progress=_progress_printer())
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: every finished item is in {spec.run_dir / 'results.jsonl'}; continue with:\n"
                   f"  geoagent eval run --resume {_shell_quote(spec.run_dir)}", err=True)
        raise typer.Exit(130) from None
    _write(spec.run_dir / "metrics.json", json.dumps({k: m.to_dict() for k, m in metrics.items()}, indent=2) + "\n")
    from eval.report import comparison_text

    ordered = {s.name: metrics[s.name] for s in loaded if s.name in metrics}
    typer.echo(comparison_text(ordered, data.name))
    typer.echo(f"results: {spec.run_dir / 'results.jsonl'}; report: geoagent eval report {_shell_quote(spec.run_dir)}")


def _shell_quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _absolute_ref(ref, base_dir) -> str | dict:
    """A system reference that still resolves when the run is resumed from another folder."""
    if isinstance(ref, str) and ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = Path(base_dir) / path
        return str(path.resolve())
    return ref


def _recorded_invocation(run_dir: Path) -> dict:
    """What ``eval run`` recorded in RUN_DIR/run.json to be resumed by ``--resume RUN_DIR``."""
    from eval.records import read_run_info
    from rag_store.errors import ConfigError

    info = read_run_info(run_dir)
    invocation = info.get("invocation")
    if not isinstance(invocation, dict) or "dataset" not in invocation:
        raise ConfigError(f"{run_dir} has no run.json from this version of geoagent to resume from: "
                          "repeat the whole `eval run` command with --run-dir and --resume")
    declared = dict(invocation.get("settings") or {})
    declared["dataset"] = dict(invocation["dataset"])
    declared["configs"] = list(invocation.get("configs") or [])
    declared["concurrency"] = invocation.get("concurrency")
    declared["allow_self_match"] = bool(invocation.get("allow_self_match", False))
    return declared


def run_setup(settings, data) -> dict:
    """The setup a report shows beside the numbers: model, endpoint host, gallery, encoder, k, ..."""
    from urllib.parse import urlparse

    from agent.cli import version

    setup = {
        "model": settings.model,
        # The host only: a URL may carry credentials (user:password@) or a key in its query.
        "endpoint_host": urlparse(settings.base_url).hostname if settings.base_url else ("api.openai.com" if settings.model else None),
        "gallery": settings.collection,
        "gallery_size": None,
        "encoder": settings.encoder,
        "k": settings.k,
        "dataset": data.name,
        "dataset_size": len(data.samples),
        "dataset_source_size": data.total,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "geoagent_version": version(),
    }
    try:
        from rag_store.store import Gallery, open_client

        gallery = Gallery.open(open_client(settings.store, settings.chroma_url), settings.collection)
        setup["gallery_size"] = gallery.count()
        setup["encoder"] = gallery.encoder_name
    except Exception:  # noqa: BLE001 - the setup block is informative; the run reports real errors
        pass
    return setup


def _default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("geoagent")) / "replies"


def _progress_printer():
    """A rich progress bar with rate, ETA and running accuracy."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
        TextColumn("{task.fields[acc]}"), console=Console(stderr=True), transient=False,
    )
    state: dict = {}

    def update(done: int, total: int, running: dict) -> None:
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task("eval", total=total, completed=done, rate="", acc="")
            state["t0"], state["d0"] = time.perf_counter(), done
        elapsed = time.perf_counter() - state["t0"]
        rate = (done - state["d0"]) / elapsed if elapsed > 0 else 0.0
        scored = running["scored"] or 1
        acc = f"acc@25km {100 * running['hits25'] / scored:.1f}%  acc@2500km {100 * running['hits2500'] / scored:.1f}%"
        bar.update(state["task"], completed=done, rate=f"{rate:.1f} items/s", acc=acc)
        if done >= total:
            bar.stop()

    return update
