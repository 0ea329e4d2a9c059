"""Prompt templates as text files: ``<name>.user.txt`` and optionally ``<name>.system.txt``.

Templates use ``string.Template`` ``$names`` (JSON braces need no escaping).
Files starting with ``_`` are shared parts: ``_system.txt`` (the default system
prompt), ``_answer_format.txt``, ``_similar.txt`` and ``_dissimilar.txt``.

Variables: ``$similar`` / ``$dissimilar`` (coordinate lists), ``$n_similar`` /
``$n_dissimilar``, ``$similar_block`` / ``$dissimilar_block`` (the shared parts,
empty when there are no neighbours), ``$answer_format``, ``$max_candidates``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from rag_store.errors import unknown_name

PROMPTS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str

    def render(self, **values: object) -> tuple[str, str]:
        """(system, user) text with every ``$name`` substituted."""
        return (
            Template(self.system).substitute(values).strip(),
            Template(self.user).substitute(values).strip(),
        )


def _read(name: str) -> str:
    return (PROMPTS_DIR / name).read_text(encoding="utf-8")


def list_prompts() -> list[str]:
    return sorted(p.name.removesuffix(".user.txt") for p in PROMPTS_DIR.glob("*.user.txt"))


def load_prompt(name: str) -> PromptTemplate:
    """The template ``name``; an unknown name raises ``ConfigError`` listing the available ones."""
    if name not in list_prompts():
        raise unknown_name("prompt", name, list_prompts())
    system_file = PROMPTS_DIR / f"{name}.system.txt"
    system = system_file.read_text(encoding="utf-8") if system_file.exists() else _read("_system.txt")
    return PromptTemplate(name, system, _read(f"{name}.user.txt"))


def prompt_fingerprint(name: str) -> dict[str, str]:
    """SHA-256 of every template file a prompt renders from (its own and the shared parts),
    by file name: part of a benchmark run's identity, so that an edited prompt is noticed."""
    import hashlib

    load_prompt(name)  # an unknown name raises here
    files = [f"{name}.user.txt", f"{name}.system.txt" if (PROMPTS_DIR / f"{name}.system.txt").exists() else "_system.txt"]
    files += sorted(p.name for p in PROMPTS_DIR.glob("_*.txt") if p.name != "_system.txt")
    return {f: hashlib.sha256(_read(f).encode("utf-8")).hexdigest() for f in files}


def shared_part(name: str) -> str:
    """A shared part such as ``_similar.txt``, by name without the underscore and suffix."""
    return _read(f"_{name}.txt")
