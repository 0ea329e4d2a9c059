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
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result as JSON to this file.")] = None,
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
        Path | None, typer.Option("--prices", help="YAML price table: MODEL: {input: $/1M, output: $/1M}.")
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
    for name, m in report.metrics.items():
        typer.echo(m.table(title=f"== {name}"))
        typer.echo("")
    typer.echo(f"wrote {report.markdown}")
    typer.echo(f"wrote {report.html}")


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        from rag_store.errors import InputError

        raise InputError(f"cannot write {path}: {exc.strerror}") from None


@eval_app.command("run")
@fail_cleanly
def run_command(
    run_file: Annotated[Path | None, typer.Argument(help="A run declared in YAML/TOML (dataset, configs, model, ...); flags override it.")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Truth CSV (with --images), an LLMGeo folder, or a folder of EXIF-tagged photos.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Photo folder of a CSV dataset.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset name for the published anchors: im2gps3k, yfcc4k, ...")] = None,
    configs: Annotated[list[str] | None, typer.Option("--config", help="System config name or YAML file; repeat for a grid.")] = None,
    model: Annotated[str | None, typer.Option("--model")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url")] = None,
    store: Annotated[Path | None, typer.Option("--store")] = None,
    chroma_url: Annotated[str | None, typer.Option("--chroma-url")] = None,
    collection: Annotated[str | None, typer.Option("--collection")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Where results.jsonl, metrics.json and the report go.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="First N items.")] = None,
    sample: Annotated[int | None, typer.Option("--sample", help="N items at random (with --seed).")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Items in flight.")] = None,
    rate_limit: Annotated[float | None, typer.Option("--rate-limit", help="Model requests per second.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Model reply cache (default: the user cache dir).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the reply cache.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a killed run in --run-dir.")] = False,
    allow_self_match: Annotated[bool, typer.Option("--allow-self-match", help="Let an item retrieve its own photo from the gallery (off: same id, same file or a near-copy is left out).")] = False,
) -> None:
    """Run system configs over a dataset; every item is recorded as it finishes."""
    from agent.settings import Settings
    from eval.datasets import load_dataset
    from eval.runner import RunSpec, read_run_file, run
    from eval.systems import load_system
    from rag_store.errors import ConfigError

    declared = read_run_file(run_file) if run_file else {"dataset": {}}
    ds = declared.pop("dataset")
    source = dataset or ds.get("source")
    if source is None:
        raise ConfigError("give a dataset: --dataset CSV --images DIR, or a run file")
    data = load_dataset(
        source,
        images=images or ds.get("images"),
        name=name or ds.get("name"),
        kind=ds.get("kind"),
        limit=limit if limit is not None else ds.get("limit"),
        sample=sample if sample is not None else ds.get("sample"),
        seed=seed if seed is not None else ds.get("seed", 0),
    )
    refs = configs or declared.pop("configs", None) or ["retrieval-only"]
    declared.pop("configs", None)
    base_dir = run_file.parent if run_file else None
    systems = [load_system(ref, base_dir=base_dir) for ref in refs]
    if len({s.name for s in systems}) != len(systems):
        raise ConfigError(f"config names repeat: {', '.join(s.name for s in systems)}")
    out_dir = run_dir or declared.pop("run_dir", None) or Path("runs") / f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    declared.pop("run_dir", None)
    n_parallel = concurrency or declared.pop("concurrency", None) or 8
    declared.pop("concurrency", None)
    cache = None if no_cache else str(cache_dir or declared.pop("cache_dir", None) or _default_cache_dir())
    declared.pop("cache_dir", None)
    flags = {"model": model, "base_url": base_url, "store": str(store) if store else None,
             "chroma_url": chroma_url, "collection": collection, "rate_limit": rate_limit}
    base = Settings.load(None, **{**declared, **{k: v for k, v in flags.items() if v is not None}})
    # Benchmarks never read the answer from EXIF.
    base = base.replace(ignore_exif=True, cache_dir=cache, concurrency=n_parallel)
    spec = RunSpec(Path(out_dir), data, systems, base, concurrency=n_parallel, extra={"dataset_kind": data.kind},
                   allow_self_match=allow_self_match)
    typer.echo(f"run {spec.run_dir}: {len(data.samples)} items x {len(systems)} configs ({', '.join(s.name for s in systems)})", err=True)
    metrics = run(spec, resume=resume, progress=_progress_printer())
    _write(spec.run_dir / "metrics.json", json.dumps({k: m.to_dict() for k, m in metrics.items()}, indent=2) + "\n")
    for config_name, m in metrics.items():
        typer.echo(m.table(title=f"== {config_name}"))
        typer.echo("")
    typer.echo(f"results: {spec.run_dir / 'results.jsonl'}; report: geoagent eval report {spec.run_dir}")


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
