"""System configs of a benchmark run: short YAML files of ``Settings`` overrides.

Like lm-evaluation-harness task configs, a config may ``include:`` another and
override some keys; ``description`` is for humans. ``model: null`` makes a
retrieval-only config whatever model the run uses. Built-in configs live in
``eval/configs/``; a path to a YAML file works too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agent.settings import Settings
from rag_store.errors import ConfigError, unknown_name

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
META_KEYS = {"include", "description", "name"}


@dataclass(frozen=True)
class SystemConfig:
    name: str
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def retrieval_only(self) -> bool:
        return "model" in self.overrides and self.overrides["model"] is None

    def settings(self, base: Settings) -> Settings:
        """``base`` (the run's model, endpoint and store) with this config's overrides."""
        values = dict(self.overrides)
        if values.get("variants") is not None:
            values["variants"] = tuple(values["variants"])
        return base.replace(**values)


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _read(ref: str, base_dir: Path | None) -> tuple[str, dict, Path | None]:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        name = path.stem
    else:
        if ref not in builtin_configs():
            raise unknown_name("benchmark config", ref, builtin_configs())
        path, name = CONFIGS_DIR / f"{ref}.yaml", ref
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    return name, data, path.parent


def load_system(ref: str | dict, *, _seen: tuple[str, ...] = (), base_dir: Path | None = None) -> SystemConfig:
    """Resolve a config name, a YAML path, or an inline mapping (with optional ``include``)."""
    if isinstance(ref, dict):
        name, data, here = str(ref.get("name") or ref.get("include") or "custom"), dict(ref), base_dir
    else:
        if ref in _seen:
            raise ConfigError(f"config include cycle: {' -> '.join((*_seen, ref))}")
        name, data, here = _read(ref, base_dir)
    allowed = {f.name for f in fields(Settings)} - {"api_key"}
    for key in data:
        if key not in allowed | META_KEYS:
            raise unknown_name(f"key in config {name!r}", key, allowed | META_KEYS)
    overrides: dict[str, Any] = {}
    description = ""
    if data.get("include"):
        parent = load_system(data["include"], _seen=(*_seen, name), base_dir=here)
        overrides.update(parent.overrides)
        description = parent.description
    overrides.update({k: v for k, v in data.items() if k not in META_KEYS})
    description = str(data.get("description") or description)
    config = SystemConfig(str(data.get("name") or name), description, overrides)
    config.settings(Settings())  # validate values now, with a clear error, not mid-run
    return config
