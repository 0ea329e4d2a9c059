"""The settings keys table of the README, generated from ``agent.settings.Settings``.

``python -m agent.settings_doc README.md`` rewrites the table between the
``<!-- settings-table -->`` markers; ``tests/test_docs.py`` fails when the README's
table differs from what ``Settings`` holds, so the two cannot drift apart.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .settings import ENV, Settings

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"

MEANING = {
    "model": "Model name at the OpenAI-compatible endpoint; none = retrieval only",
    "base_url": "OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, ...); none = OpenAI",
    "api_key": "API key of the endpoint; never written to a log, record or output",
    "timeout": "Seconds per model request",
    "max_retries": "Retries on 429, 5xx and timeouts, with exponential backoff",
    "concurrency": "Model requests (and photos) in flight per agent",
    "rate_limit": "Model requests per second, per endpoint; none = no limit",
    "store": "Embedded Chroma directory; none = the user data dir",
    "chroma_url": "Chroma server http://HOST:PORT instead of `store`",
    "collection": "Gallery collection name",
    "encoder": "Query encoder; none = the encoder that built the gallery",
    "gps_collection": "Collection of GeoCLIP's 100K GPS gallery",
    "use_gps_gallery": "Add GeoCLIP GPS-gallery candidates (with the geoclip encoder, when the store has it)",
    "k": "Similar and dissimilar gallery neighbours retrieved",
    "gps_k": "GeoCLIP GPS-gallery candidates",
    "prompt": "Prompt template (`prompts/`)",
    "variants": "One prompt variant per neighbour count given to the model (G3 diversification)",
    "samples": "Model samples per variant",
    "temperature": "Sampling temperature, 0..2",
    "max_side": "Longest side in pixels of the image sent to the model",
    "json_mode": "Ask the endpoint for response_format=json_object",
    "verification": "How candidates are scored: auto, geoclip, neighbours or none",
    "fallback": "When the model gives no usable answer: retrieval (answer from the gallery) or none",
    "ignore_exif": "Do not answer from the photo's EXIF GPS",
    "cache_dir": "Folder of the model reply cache (SQLite); none = no cache",
    "url_max_bytes": "Largest photo downloaded from a URL, in bytes",
    "url_timeout": "Seconds allowed to download a photo from a URL",
    "allow_network": "Let chat's model geocode place names online (Nominatim)",
}


def _type(hint: object) -> str:
    text = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None").replace(" | None", " or none")


def markdown_table() -> str:
    hints = typing.get_type_hints(Settings)
    rows = ["| Key | Type | Default | Environment | Meaning |", "|---|---|---|---|---|"]
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if default is None:
            shown = "none"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, str):
            shown = f'"{default}"'
        else:
            shown = str(list(default) if isinstance(default, tuple) else default)
        env = f"`{ENV[f.name]}`" if f.name in ENV else ""
        rows.append(f"| `{f.name}` | {_type(hints[f.name])} | `{shown}` | {env} | {MEANING.get(f.name, '')} |")
    return "\n".join(rows)


def rewrite(readme: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{markdown_table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
