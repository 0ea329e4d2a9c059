"""Benchmark runs: a dataset x one or more system configs, each item recorded as it finishes.

Like an Inspect AI task (dataset + solver + scorer): the dataset gives samples,
each system config's ``GeoAgent`` is the solver, and ``eval.records.make_record``
/ ``eval.metrics`` score. Every finished item is appended at once to
``RUN_DIR/results.jsonl`` (flushed and fsynced), so a run killed at any moment
loses at most the items in flight, and ``resume=True`` continues it without
redoing or duplicating any item. Model replies are cached outside the run
directory, so repeating a run costs no model calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.api import GeoAgent
from agent.errors import (
    ConfigError,
    GeoagentError,
    ModelAuthError,
    ModelTimeout,
    ModelUnavailable,
)
from agent.settings import Settings
from prompts import prompt_fingerprint
from rag_store.outputs import write_output

from .datasets import Dataset, Sample
from .metrics import Metrics, compute_metrics
from .records import RESULTS_FILE, RUN_FILE, items_by_config, make_record
from .systems import SystemConfig

Progress = Callable[[int, int, dict[str, Any]], None]


@dataclass
class RunSpec:
    run_dir: Path
    dataset: Dataset
    systems: list[SystemConfig]
    base: Settings  # the run's model, endpoint, store and cache
    concurrency: int = 8
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in run.json
    # Off: a gallery entry that is the evaluated photo itself is never retrieved (see SelfMatch).
    allow_self_match: bool = False

    def config_settings(self, system: SystemConfig) -> Settings:
        """The settings one config's agent runs with."""
        return system.settings(self.base).replace(exclude_self_matches=not self.allow_self_match)

    def identity(self) -> dict[str, Any]:
        """What must match for ``resume`` to continue this run rather than another.

        Per config: every setting that changes answers (not the transport ones) and the
        SHA-256 of each prompt template file it renders from.
        """
        ids = hashlib.sha256("\n".join(s.id for s in self.dataset.samples).encode()).hexdigest()
        configs = {}
        for system in self.systems:
            settings = self.config_settings(system).public_dict()
            configs[system.name] = {
                "settings": {k: v for k, v in settings.items() if k not in TRANSPORT_SETTINGS},
                "prompt": prompt_fingerprint(settings["prompt"]),
            }
        return json.loads(json.dumps({
            "dataset": self.dataset.name,
            "items_sha256": ids,
            "configs": configs,
            "model": self.base.model,
            "self_match": "allowed" if self.allow_self_match else "excluded",
        }, default=str))


# Settings that change how a run reaches its endpoint and store, not what it answers.
TRANSPORT_SETTINGS = {
    "base_url", "timeout", "max_retries", "concurrency", "rate_limit", "cache_dir",
    "url_max_bytes", "url_timeout", "chroma_url",
}


def identity_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two run identities, in words: "config 'g3' prompt file g3.user.txt"."""
    changes = []
    for key in current:
        if key == "configs":
            continue
        if previous.get(key) != current[key]:
            changes.append(key)
    before, now = previous.get("configs") or {}, current["configs"]
    for name in sorted(set(before) ^ set(now)):
        changes.append(f"config {name!r} {'added' if name in now else 'removed'}")
    for name in now:
        if name not in before or not isinstance(before[name], dict):
            continue
        old = before[name]
        for part, what in (("settings", "setting"), ("prompt", "prompt file")):
            a, b = old.get(part) or {}, now[name][part]
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if keys:
                changes.append(f"config {name!r} {what}{'s' if len(keys) > 1 else ''} {', '.join(keys)}")
    return changes


def _repair_tail(path: Path) -> None:
    """Cut a last line a kill left half-written, so the next record starts on its own line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _done(path: Path) -> set[tuple[str, str]]:
    done = set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done.add((str(record["config"]), str(record["id"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def prepare_run_dir(spec: RunSpec, resume: bool) -> set[tuple[str, str]]:
    """Create or check RUN_DIR; return the (config, id) pairs already recorded."""
    run_dir = spec.run_dir
    results, info = run_dir / RESULTS_FILE, run_dir / RUN_FILE
    identity = spec.identity()
    if resume:
        if not info.is_file():
            raise ConfigError(f"nothing to resume in {run_dir}: it has no {RUN_FILE}; start the run without --resume")
        previous = json.loads(info.read_text(encoding="utf-8")).get("identity", {})
        if previous != identity:
            changed = identity_changes(previous, identity) or ["identity"]
            raise ConfigError(
                f"{run_dir} holds a different run (changed: {'; '.join(changed)}): resume with the "
                f"same dataset, configs, prompts, settings and model, or use another --run-dir"
            )
        if results.is_file():
            _repair_tail(results)
        return _done(results)
    if results.is_file() and results.stat().st_size > 0:
        raise ConfigError(f"{run_dir} already holds results: pass --resume to continue it, or use another --run-dir")
    meta = {
        "identity": identity,
        "dataset": spec.dataset.name,
        "dataset_info": spec.dataset.describe(),
        "configs": [{"name": s.name, "description": s.description, "settings": spec.config_settings(s).public_dict()} for s in spec.systems],
        "concurrency": spec.concurrency,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **spec.extra,
    }
    write_output(info, json.dumps(meta, indent=2, default=str) + "\n", what="run file")
    return set()


def build_agents(spec: RunSpec) -> dict[str, GeoAgent]:
    agents = {}
    for system in spec.systems:
        settings = spec.config_settings(system).replace(concurrency=max(spec.concurrency, spec.base.concurrency))
        if settings.model is None and not system.retrieval_only:
            raise ConfigError(f"config {system.name!r} needs a model: pass --model (and --base-url)")
        agents[system.name] = GeoAgent.from_settings(settings)
    return agents


async def run_async(spec: RunSpec, *, resume: bool = False, progress: Progress | None = None) -> dict[str, Metrics]:
    agents = build_agents(spec)  # fails on a bad config before RUN_DIR is touched
    done = prepare_run_dir(spec, resume)
    todo: list[tuple[SystemConfig, Sample]] = [
        (system, sample)
        for sample in spec.dataset.samples
        for system in spec.systems
        if (system.name, sample.id) not in done
    ]
    total = len(spec.dataset.samples) * len(spec.systems)
    running = {"done": len(done), "hits25": 0, "hits2500": 0, "scored": 0}
    sem = asyncio.Semaphore(spec.concurrency)
    results = (spec.run_dir / RESULTS_FILE).open("a", encoding="utf-8")
    # One writer thread: records are appended one at a time, each flushed and fsynced before
    # its item counts as done, without the fsync (milliseconds each) stalling the event loop.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results-writer")
    loop = asyncio.get_running_loop()

    def write(record: dict[str, Any]) -> None:
        results.write(json.dumps(record, ensure_ascii=False) + "\n")
        results.flush()
        os.fsync(results.fileno())

    async def one(system: SystemConfig, sample: Sample) -> None:
        async with sem:
            started = time.perf_counter()
            output, error = None, None
            try:
                # The item's id is the gallery id of its photo when the gallery came from the
                # same CSV: never its own neighbour (unless --allow-self-match).
                prediction = await agents[system.name].alocate(sample.image, exclude_ids=(sample.id,))
                output = prediction.to_dict()
                error = prediction.error
            except ModelTimeout as exc:  # this item's calls timed out: its record says so
                error = f"{type(exc).__name__}: {exc}"
            except (ModelAuthError, ModelUnavailable):
                raise  # the endpoint is unusable: stop; --resume continues once it is fixed
            except asyncio.CancelledError:
                raise
            except GeoagentError as exc:
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - one item's failure, whatever it is, ends only that item
                error = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            record = make_record(
                system.name, sample.id, sample.target(), output, input=str(sample.image),
                timings={"total_s": round(time.perf_counter() - started, 4)}, error=error,
            )
        # Written after the slot is freed, so that the next item's model call does not wait
        # for this record's fsync; the item counts as done once its record is on disk.
        await loop.run_in_executor(writer, write, record)
        running["done"] += 1
        d = (record["scores"] or {}).get("distance_km")
        if d is not None:  # 0.0 km is a hit, not "no distance"
            running["hits25"] += d <= 25
            running["hits2500"] += d <= 2500
        running["scored"] += 1
        if progress:
            progress(running["done"], total, running)

    if progress:
        progress(running["done"], total, running)
    try:
        tasks = [asyncio.ensure_future(one(system, sample)) for system, sample in todo]
        try:
            await asyncio.gather(*tasks)
        except (ModelAuthError, ModelUnavailable) as exc:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # A configuration failure: every item would fail the same way. Say how to go on.
            raise type(exc)(
                f"{exc}. The run stopped after {running['done']} of {total} items (all kept in "
                f"{spec.run_dir / RESULTS_FILE}); fix it, then continue with the same command "
                f"plus --resume --run-dir {spec.run_dir}"
            ) from None
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    finally:
        writer.shutdown(wait=True)  # records already handed over are written before closing
        results.close()
    return metrics_of(spec.run_dir)


def metrics_of(run_dir: Path, **kwargs: Any) -> dict[str, Metrics]:
    from .records import read_results

    per_config, _ = items_by_config(read_results(run_dir / RESULTS_FILE))
    return {name: compute_metrics(items, **kwargs) for name, items in per_config.items()}


def run(spec: RunSpec, *, resume: bool = False, progress: Progress | None = None) -> dict[str, Metrics]:
    """Run (or with ``resume`` continue) a benchmark; metrics per config over the whole dataset."""
    return asyncio.run(run_async(spec, resume=resume, progress=progress))


RUN_KEYS = {"dataset", "configs", "run_dir", "concurrency", "cache_dir"}
DATASET_KEYS = {"source", "images", "name", "kind", "limit", "sample", "seed"}


def read_run_file(path: str | Path) -> dict[str, Any]:
    """A run declared in TOML or YAML: ``dataset: {source, images, name, limit|sample, seed}``,
    ``configs: [names or {include, ...overrides}]``, ``run_dir``, ``concurrency`` and any
    ``Settings`` key (model, base_url, store, rate_limit, ...). Relative paths are taken
    from the file's folder."""
    import tomllib

    import yaml

    from agent.settings import Settings as _S

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"run file not found: {path}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read run file {path}: {exc}") from None
    if not isinstance(data, dict) or "dataset" not in data or not isinstance(data["dataset"], dict):
        raise ConfigError(f"run file {path} needs a 'dataset' mapping (source, images, name, ...)")
    from rag_store.errors import unknown_name

    settings_keys = {f for f in _S.__dataclass_fields__} - {"api_key"}
    for key in data:
        if key not in RUN_KEYS | settings_keys:
            raise unknown_name(f"key in run file {path}", key, RUN_KEYS | settings_keys)
    for key in data["dataset"]:
        if key not in DATASET_KEYS:
            raise unknown_name(f"dataset key in run file {path}", key, DATASET_KEYS)
    here = path.parent
    for holder, key in ((data["dataset"], "source"), (data["dataset"], "images"), (data, "run_dir"), (data, "store"), (data, "cache_dir")):
        if holder.get(key) and not Path(holder[key]).expanduser().is_absolute():
            holder[key] = str(here / holder[key])
    return data
