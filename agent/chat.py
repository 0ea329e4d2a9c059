"""``geoagent chat [IMAGE]``: work one photo interactively with the model and the gallery.

An analyst attaches a photo, runs the full chain (``/locate``) and then pushes back in
free text ("could this be Portugal instead?"). Free text goes to the model together
with the photo, a summary of the current prediction and the conversation so far; the
model may call tools (gallery neighbours, reverse geocoding, distances, EXIF, and
geocoding when the network is allowed). Answers stream token by token.

Everything async (the locate chain, the chat model, tools) runs on ONE event loop, an
``asyncio.Runner`` kept for the whole session: the chat model's HTTP client and its pooled
connections belong to that loop, and the runner turns Ctrl-C into cancelling the answer
in progress, not the session.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool, StructuredTool
from PIL import ExifTags, Image
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rag_store.errors import GeoagentError, InputError
from rag_store.images import read_exif_gps
from rag_store.outputs import write_output
from rag_store.store import Neighbour, Retrieval

from . import geo
from .api import GeoAgent
from .chain import image_data_url
from .console import clean_text, safe
from .errors import ModelError
from .llm import ModelClient
from .prediction import Prediction

MAX_TOOL_ROUNDS = 5  # model turns that may call tools before it must answer in text
PROMPT = "geoagent> "
COMMANDS: dict[str, str] = {
    "/image": "PATH|URL   attach a photo (the conversation starts over)",
    "/locate": "          run the full chain on the photo and show the result card",
    "/neighbors": "[N]       show the gallery neighbours of the photo (also /neighbours)",
    "/map": "FILE.html  write a map of the prediction, its candidates and neighbours",
    "/save": "FILE.json  save the transcript: messages, predictions and settings",
    "/reset": "          forget the conversation and the prediction (keeps the photo)",
    "/help": "          this list",
    "/quit": "          leave (also Ctrl-D)",
}
ALIASES = {"/neighbours": "/neighbors", "/exit": "/quit", "/q": "/quit", "/?": "/help"}
NO_MODEL = (
    "free-text questions need a model: start the chat with --model NAME (plus --base-url URL "
    "for a local OpenAI-compatible server, and OPENAI_API_KEY for the key), or set "
    "GEOAGENT_MODEL. /locate works without one (retrieval only)."
)
SYSTEM = """\
You are geoagent, helping an analyst work out where a photo was taken. The photo is
attached below. Reason from visible evidence (vegetation, architecture, road markings,
signs, language, vehicles, sun and shadows, terrain) and say how sure you are.
Tools: gallery_neighbours (geotagged gallery photos that look like this one),
reverse_geocode, distance_km, read_exif, geocode (place name to coordinates). Use them
when they settle a question; never invent tool results. Answer concisely, in plain text;
give coordinates as decimal degrees when you name a location.

{prediction}"""


def now() -> str:
    """A UTC timestamp for the transcript."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------ the photo


@dataclass
class Photo:
    """The attached photo: decoded, its original bytes (for EXIF) and a label."""

    image: Image.Image
    raw: bytes
    label: str
    _data_url: dict[int, str] = field(default_factory=dict, repr=False)

    def data_url(self, max_side: int) -> str:
        # Encoded once per size: every model request carries it.
        if max_side not in self._data_url:
            self._data_url[max_side] = image_data_url(self.image, max_side)
        return self._data_url[max_side]


def read_photo(src: str, agent: GeoAgent) -> Photo:
    """A path or http(s) URL as a ``Photo``; ``ImageError`` when it cannot be used."""
    src = src.strip().strip("'\"")  # paths pasted from a file manager come quoted
    image, raw, label = agent.read(src if "://" in src else Path(src).expanduser())
    return Photo(image, raw or b"", label)


EXIF_TAGS = (
    "Make", "Model", "Software", "DateTime", "DateTimeOriginal", "OffsetTimeOriginal",
    "LensModel", "ImageDescription", "Artist", "Copyright", "Orientation",
)


def exif_summary(photo: Photo) -> dict[str, Any]:
    """GPS and basic EXIF tags of the photo, JSON-ready."""
    tags: dict[str, str] = {}
    fmt, size = None, photo.image.size
    try:
        with Image.open(io.BytesIO(photo.raw)) as im:
            fmt, size = im.format, im.size
            exif = im.getexif()
            items = dict(exif.items())
            items.update(exif.get_ifd(ExifTags.IFD.Exif))
    except Exception:  # noqa: BLE001 - a broken EXIF block just means "no tags"
        items = {}
    for tag_id, value in items.items():
        name = ExifTags.TAGS.get(tag_id, "")
        if name in EXIF_TAGS:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            tags[name] = str(value).strip("\x00 ").strip()
    gps = read_exif_gps(photo.raw)
    return {
        "gps": {"latitude": gps[0], "longitude": gps[1]} if gps else None,
        "tags": tags,
        "format": fmt,
        "width": size[0],
        "height": size[1],
    }


# ------------------------------------------------------------------ rendering


def prediction_summary(p: Prediction | None) -> str:
    """The current prediction in a few lines, for the model's system message."""
    if p is None:
        return "No prediction yet (the analyst can run /locate for the full retrieval + model chain)."
    if p.latitude is None:
        return f"The last /locate gave no answer ({p.status}): {p.error or 'no detail'}."
    conf = f"{p.confidence:.0%}" if p.confidence is not None else "n/a"
    lines = [
        f"Current prediction (from /locate): {p.latitude:.5f}, {p.longitude:.5f}, "
        f"{p.place or 'unknown place'} (city {p.city or '-'}, region {p.region or '-'}, "
        f"country {p.country or '-'}); confidence {conf}; source {p.source}.",
    ]
    if p.candidates:
        lines.append("Top candidates:")
        for c in p.candidates[:5]:
            score = f"{c.score:.3f}" if c.score is not None else "-"
            lines.append(f"- {c.latitude:.4f}, {c.longitude:.4f} {c.place or ''} ({c.origin}, score {score})")
    if p.clues:
        lines.append("Clues: " + "; ".join(c.text for c in p.clues[:8]))
    if p.reasoning:
        lines.append(f"Reasoning: {p.reasoning}")
    return "\n".join(lines)


def neighbours_table(neighbours: list[Neighbour]) -> Table:
    """Gallery neighbours: image id, lat, lon, similarity and where that is."""
    places = geo.reverse_geocode([(n.lat, n.lon) for n in neighbours]) if neighbours else []
    table = Table("image id", "lat", "lon", "similarity", "place", box=None, pad_edge=False)
    for n, place in zip(neighbours, places, strict=True):
        where = ", ".join(x for x in (place.city, place.country) if x) or "open water"
        table.add_row(safe(n.image_id), f"{n.lat:.4f}", f"{n.lon:.4f}", f"{n.similarity:.3f}", where)
    return table


def suggest(command: str) -> str:
    """The one-line answer to an unknown command, with the closest known one."""
    known = list(COMMANDS) + list(ALIASES)
    close = difflib.get_close_matches(command, known, n=1, cutoff=0.6)
    hint = f" Did you mean {ALIASES.get(close[0], close[0])}?" if close else ""
    return f"unknown command {command}.{hint} Type /help"


# ------------------------------------------------------------------ tools


class NeighboursArgs(BaseModel):
    k: int = Field(5, ge=1, le=50, description="How many of the most similar gallery photos.")


class PointArgs(BaseModel):
    latitude: float = Field(description="Latitude in decimal degrees, -90..90.")
    longitude: float = Field(description="Longitude in decimal degrees, -180..180.")


class DistanceArgs(BaseModel):
    lat1: float = Field(description="Latitude of the first point.")
    lon1: float = Field(description="Longitude of the first point.")
    lat2: float = Field(description="Latitude of the second point.")
    lon2: float = Field(description="Longitude of the second point.")


class GeocodeArgs(BaseModel):
    place: str = Field(description="A place name, e.g. 'Porto, Portugal'.")


class NoArgs(BaseModel):
    pass


# ------------------------------------------------------------------ the session


@dataclass
class Entry:
    """One transcript line."""

    role: str  # user | assistant | tool | command | error
    content: str
    at: str = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content, "at": self.at, **self.extra}


class ChatSession:
    """One analyst session over one ``GeoAgent``: commands, free text, transcript."""

    def __init__(self, agent: GeoAgent, console: Console | None = None):
        self.agent = agent
        self.settings = agent.settings
        self.console = console or Console()
        self.runner = asyncio.Runner()
        self.photo: Photo | None = None
        self.prediction: Prediction | None = None
        self._retrieval: Retrieval | None = None
        self.history: list[BaseMessage] = []  # what the model sees of the conversation
        self.entries: list[Entry] = []  # everything, for /save
        self.predictions: list[dict[str, Any]] = []
        self.started = now()
        self.tools = self._make_tools()
        self._partial = ""  # text of the answer streaming now, kept if it is cancelled

    def close(self) -> None:
        self.runner.close()

    # -------------------------------------------------------------- output

    def say(self, message: str, style: str | None = None) -> None:
        """One line of plain text (no markup: paths and model text may hold brackets)."""
        self.console.print(Text(clean_text(message), style=style or ""), soft_wrap=True)

    def error(self, message: str) -> None:
        self.say(" ".join(message.split()), style="red")  # always one line
        self.entries.append(Entry("error", message))

    # -------------------------------------------------------------- dispatch

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the session should end."""
        line = line.strip()
        if not line:
            return True
        try:
            if line.startswith("/"):
                return self.command(line)
            self.ask(line)
        except KeyboardInterrupt:
            # Ctrl-C cancels what runs now (an answer, /locate, a download), not the session.
            self.say("(cancelled)", style="yellow")
        except GeoagentError as exc:
            self.error(f"error: {exc}")
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        name = ALIASES.get(name.lower(), name.lower())
        arg = arg.strip()
        if name not in COMMANDS:
            self.say(suggest(line.split()[0]), style="yellow")
            return True
        self.entries.append(Entry("command", line))
        if name == "/quit":
            return False
        handler: Callable[[str], None] = getattr(self, "cmd_" + name[1:])
        handler(arg)
        return True

    def cmd_help(self, arg: str) -> None:
        for name, text in COMMANDS.items():
            self.say(f"{name} {text}")
        self.say("Anything else is a question for the model about the attached photo.", style="dim")

    def cmd_image(self, arg: str) -> None:
        if not arg:
            raise InputError("usage: /image PATH|URL")
        self.attach(arg)

    def attach(self, src: str) -> None:
        """Attach a photo: the prediction and the model's conversation start over."""
        photo = read_photo(src, self.agent)
        self.photo, self.prediction, self._retrieval = photo, None, None
        self.history = []
        w, h = photo.image.size
        self.say(f"attached {photo.label} ({w}x{h}). /locate to run the full chain, or ask a question.")

    def cmd_locate(self, arg: str) -> None:
        photo = self._need_photo()
        prediction = self.runner.run(self.agent.alocate(photo.raw))
        prediction.image = photo.label  # the chain saw bytes; name the photo the analyst gave
        self.prediction = prediction
        self.predictions.append({"at": now(), "image": photo.label, "prediction": prediction.to_dict()})
        from .console import result_card  # one result card for `locate` and `chat`

        self.console.print(result_card(prediction), highlight=False)

    def cmd_neighbors(self, arg: str) -> None:
        try:
            k = int(arg) if arg else self.settings.k
        except ValueError:
            raise InputError(f"usage: /neighbors [N], not {arg!r}") from None
        neighbours = self.neighbours(k)
        if not neighbours:
            self.say("no neighbours: the gallery is empty")
            return
        self.console.print(neighbours_table(neighbours))

    def cmd_map(self, arg: str) -> None:
        if not arg:
            raise InputError("usage: /map FILE.html")
        if self.prediction is None:
            raise InputError("no prediction to map yet: run /locate first")
        from .maps import write_map

        path = write_map([self.prediction], Path(arg).expanduser())
        self.say(f"map written to {path}")

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise InputError("usage: /save FILE.json")
        path = write_output(arg, json.dumps(self.transcript(), ensure_ascii=False, indent=2), what="transcript")
        self.say(f"transcript saved to {path} ({len(self.entries)} messages, {len(self.predictions)} predictions)")

    def cmd_reset(self, arg: str) -> None:
        self.prediction, self.history = None, []
        self.say("conversation and prediction cleared" + (f"; still on {self.photo.label}" if self.photo else ""))

    def transcript(self) -> dict[str, Any]:
        """What /save writes. The settings come without the API key."""
        return {
            "started": self.started,
            "saved": now(),
            "image": self.photo.label if self.photo else None,
            "settings": self.settings.public_dict(),
            "messages": [e.to_dict() for e in self.entries],
            "predictions": self.predictions,
        }

    # -------------------------------------------------------------- retrieval

    def _need_photo(self) -> Photo:
        if self.photo is None:
            raise InputError("no photo attached: /image PATH|URL")
        return self.photo

    def neighbours(self, k: int) -> list[Neighbour]:
        """The photo's most similar gallery entries (those of /locate when it retrieved them)."""
        photo = self._need_photo()
        if self.prediction is not None and len(self.prediction.neighbours) >= k:
            return self.prediction.neighbours[:k]
        res = self.agent.resources
        if res.gallery is None or res.encoder is None:
            raise InputError(
                f"no gallery {self.settings.collection!r} in the store: build one with `geoagent index SOURCE`"
            )
        if self._retrieval is None or len(self._retrieval.positives) < k:
            embedding = res.encoder.embed([photo.image])[0]
            self._retrieval = res.gallery.query(embedding, max(k, self.settings.k))
        return self._retrieval.positives[:k]

    # -------------------------------------------------------------- tools

    def _make_tools(self) -> list[BaseTool]:
        """The model's tools; each returns JSON, and an ``error`` field instead of raising."""

        def gallery_neighbours(k: int = 5) -> dict:
            found = self.neighbours(k)
            places = geo.reverse_geocode([(n.lat, n.lon) for n in found])
            return {
                "neighbours": [
                    {
                        "image_id": n.image_id,
                        "latitude": n.lat,
                        "longitude": n.lon,
                        "similarity": round(n.similarity, 4),
                        "place": ", ".join(x for x in (p.city, p.region, p.country) if x) or "open water",
                    }
                    for n, p in zip(found, places, strict=True)
                ]
            }

        def reverse_geocode(latitude: float, longitude: float) -> dict:
            (place,) = geo.reverse_geocode([(latitude, longitude)])
            if place.open_water:
                return {"open_water": True, "note": f"no town within {geo.OPEN_WATER_KM:.0f} km"}
            return {"country": place.country, "country_code": place.country_code, "region": place.region, "city": place.city}

        def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> dict:
            return {"km": round(float(geo.great_circle_km(lat1, lon1, lat2, lon2)), 1)}

        def read_exif() -> dict:
            return exif_summary(self._need_photo())

        def geocode(place: str) -> dict:
            if not self.settings.allow_network:
                return {"error": "network is off: geocoding a place name needs the chat started with --allow-network"}
            found = geo.geocode(place, allow_network=True)
            return {"found": False} if found is None else {"latitude": found[0], "longitude": found[1]}

        specs = [
            (gallery_neighbours, NeighboursArgs, "Most similar geotagged photos in the gallery to the attached photo, with where they are."),
            (reverse_geocode, PointArgs, "Country, region and city at a coordinate (offline GeoNames)."),
            (distance_km, DistanceArgs, "Great-circle distance in km between two coordinates."),
            (read_exif, NoArgs, "EXIF of the attached photo: GPS position if any, camera, date and time."),
            (geocode, GeocodeArgs, "Coordinates of a place name (OpenStreetMap Nominatim; needs network)."),
        ]
        return [
            StructuredTool.from_function(func=fn, name=fn.__name__, description=desc, args_schema=schema)
            for fn, schema, desc in specs
        ]

    async def run_tool(self, call: dict[str, Any]) -> str:
        """Run one tool call; a failure becomes an ``error`` the model can read and recover from."""
        tool = next((t for t in self.tools if t.name == call["name"]), None)
        if tool is None:
            return json.dumps({"error": f"no tool named {call['name']!r}"})
        try:
            result = await tool.ainvoke(call.get("args") or {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - bad arguments or input: the model should see why
            detail = str(exc) if isinstance(exc, GeoagentError) else f"{type(exc).__name__}: {exc}"
            return json.dumps({"error": " ".join(detail.split())})
        return json.dumps(result, ensure_ascii=False)

    # -------------------------------------------------------------- the model

    def model(self) -> ModelClient:
        """The agent's model client: the same endpoint, limits, deadlines and error mapping as ``locate``."""
        client = self.agent.resources.model
        if client is None:
            raise InputError("no model configured")
        return client

    def messages(self, turn: list[BaseMessage]) -> list[BaseMessage]:
        """System (with the current prediction), the photo, the conversation, this turn."""
        out: list[BaseMessage] = [SystemMessage(SYSTEM.format(prediction=prediction_summary(self.prediction)))]
        if self.photo is not None:
            url = self.photo.data_url(self.settings.max_side)
            out.append(
                HumanMessage(
                    content=[
                        {"type": "text", "text": f"The photo under analysis ({Path(self.photo.label).name}):"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ]
                )
            )
        else:
            out.append(HumanMessage("(No photo is attached yet; the analyst can attach one with /image.)"))
        return out + self.history + turn

    def ask(self, text: str) -> None:
        """Send free text to the model and stream the answer."""
        self.entries.append(Entry("user", text))
        if not self.settings.model:
            self.say(NO_MODEL, style="yellow")
            return
        turn: list[BaseMessage] = [HumanMessage(text)]
        self._partial = ""
        try:
            self.runner.run(self._answer(turn))
        except ModelError as exc:
            # One line, and the session goes on; text already streamed is kept in the transcript.
            self._end_line()
            if self._partial:
                self.entries.append(Entry("assistant", self._partial.rstrip("\n"), extra={"incomplete": True}))
            self.error(f"model error: {exc}")
            return
        except KeyboardInterrupt:
            self._end_line()
            self.entries.append(Entry("assistant", self._partial.rstrip("\n"), extra={"cancelled": True}))
            raise
        self.history += turn  # only a finished turn joins the conversation

    def _write(self, piece: str) -> None:
        # Plain writes, not rich: model text may contain [brackets] and must appear as sent,
        # less any terminal control sequence (it could rewrite what the analyst sees).
        piece = clean_text(piece)
        self.console.file.write(piece)
        self.console.file.flush()
        self._partial += piece

    def _end_line(self) -> None:
        """End a streamed line, so that what follows starts on its own line."""
        if self._partial and not self._partial.endswith("\n"):
            self._write("\n")

    async def _answer(self, turn: list[BaseMessage]) -> None:
        """Stream model turns, running tool calls between them, up to ``MAX_TOOL_ROUNDS``."""
        client = self.model()
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            # The last round must answer in text.
            choice = None if round_ < MAX_TOOL_ROUNDS else "none"
            gathered: AIMessageChunk | None = None
            async for chunk in client.stream(self.messages(turn), tools=self.tools, tool_choice=choice):
                gathered = chunk if gathered is None else gathered + chunk
                if piece := _text(chunk):
                    self._write(piece)
            self._end_line()
            if gathered is None:
                gathered = AIMessageChunk(content="")
            calls = list(gathered.tool_calls)
            # Calls whose arguments are not valid JSON still need an answer for their ids.
            calls += [
                {"name": c.get("name") or "?", "args": None, "id": c.get("id"), "bad": c.get("error") or "invalid arguments"}
                for c in gathered.invalid_tool_calls
            ]
            message = AIMessage(content=gathered.content, tool_calls=gathered.tool_calls,
                                invalid_tool_calls=gathered.invalid_tool_calls)
            turn.append(message)
            if not calls:
                self.entries.append(Entry("assistant", _text(message)))
                return
            self._partial = ""
            for call in calls:
                if "bad" in call:
                    output = json.dumps({"error": f"arguments are not valid JSON: {call['bad']}"})
                else:
                    output = await self.run_tool(call)
                turn.append(ToolMessage(content=output, tool_call_id=call["id"] or ""))
                args = ", ".join(f"{k}={v}" for k, v in (call.get("args") or {}).items())
                shown = output if len(output) <= 160 else output[:157] + "..."
                self.say(f"  [tool] {call['name']}({args}) -> {shown}", style="dim")
                self.entries.append(Entry("tool", output, extra={"tool": call["name"], "arguments": call.get("args")}))


def _text(message: BaseMessage) -> str:
    """The text of a message or chunk (string content or text blocks)."""
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)


# ------------------------------------------------------------------ the loop


def line_reader(console: Console) -> Callable[[], str]:
    """A function reading one line: prompt_toolkit on a terminal, plain ``input()`` otherwise.

    Raises ``EOFError`` at Ctrl-D / end of input and ``KeyboardInterrupt`` at Ctrl-C.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Piped or redirected: no line editing, no prompt noise in captured output.
        return lambda: input()
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory

    history: History
    try:
        from platformdirs import user_state_dir

        path = Path(user_state_dir("geoagent")) / "chat_history"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # fails now, not at the first line typed, when the state dir is read-only
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()  # read-only home: history for this session only
    session: PromptSession[str] = PromptSession(
        history=history,
        completer=WordCompleter([*COMMANDS, *ALIASES], WORD=True),
        complete_while_typing=False,  # Tab completes; no menus popping up over the answer
    )
    return lambda: session.prompt(PROMPT)


def run_chat(agent: GeoAgent, image: str | None = None, console: Console | None = None) -> None:
    """The REPL: until /quit or end of input. Errors of one line never end the session."""
    session = ChatSession(agent, console)
    s = agent.settings
    gallery = agent.resources.gallery
    model = f"model {s.model}" + (f" at {s.base_url}" if s.base_url else "") if s.model else "no model (retrieval only)"
    where = f"gallery {gallery.name!r} ({gallery.count()} photos)" if gallery else "no gallery"
    session.say(f"geoagent chat: {model}; {where}; network {'on' if s.allow_network else 'off'}. /help for commands.")
    read = line_reader(session.console)
    try:
        if image:
            session.handle(f"/image {image}")
        while True:
            try:
                line = read()
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line, like a shell
            except EOFError:
                break
            if not session.handle(line):
                break
    finally:
        session.close()
