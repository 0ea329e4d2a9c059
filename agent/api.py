"""The public API: ``GeoAgent.from_settings(...).locate(image) -> Prediction``.

``image`` is a path, bytes, a PIL image or an http(s) URL (size- and
time-limited; no other scheme). ``locate_many`` runs photos concurrently;
``alocate`` / ``alocate_many`` are the async forms.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from prompts import load_prompt
from rag_store.encoders import create_encoder
from rag_store.errors import EncoderMismatch, GalleryNotFound, GeoagentError, ImageError
from rag_store.gps_gallery import GpsGallery, build_gps_gallery
from rag_store.images import ImageInput, load_image
from rag_store.store import Gallery, open_client

from .chain import ChainState, FewShot, Resources, build_chain
from .llm import ModelClient, ResponseCache
from .prediction import Prediction
from .settings import Settings

LocateInput = ImageInput  # str | Path | bytes | PIL.Image.Image; a str may be an http(s) URL


def fetch_url(url: str, *, max_bytes: int, timeout: float) -> bytes:
    """Download a photo, refusing other schemes and bodies over ``max_bytes``.

    The whole download, from connecting to the last byte, must finish within ``timeout``
    seconds: a server that trickles a byte at a time is dropped when the time is up.
    """
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageError(f"unsupported URL scheme {scheme!r} in {url}: only http and https", "bad url")
    return _run(_download(url, max_bytes, timeout))


async def _download(url: str, max_bytes: int, timeout: float) -> bytes:
    import httpx

    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ImageError(f"{url} answered HTTP {response.status_code}", "bad url")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(f"{url} is {int(declared):,} bytes, over the {max_bytes:,} limit", "too large")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ImageError(f"{url} is over the {max_bytes:,}-byte limit", "too large")
            return bytes(body)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ImageError(f"{url} did not finish downloading within {timeout:g} s", "bad url") from exc
    except httpx.HTTPError as exc:
        raise ImageError(f"cannot download {url}: {exc}", "bad url") from exc


class GeoAgent:
    """Locates photos with the configured gallery, GPS gallery and model."""

    def __init__(self, resources: Resources):
        self.resources = resources
        self.settings = resources.settings
        self._chain = build_chain()

    def __repr__(self) -> str:
        r = self.resources
        return (
            f"GeoAgent(model={self.settings.model!r}, gallery={r.gallery.name if r.gallery else None!r}, "
            f"encoder={r.encoder.name if r.encoder else None!r}, gps_gallery={r.gps_gallery is not None})"
        )

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, config: str | Path | None = None, **overrides: Any
    ) -> GeoAgent:
        """Build an agent from ``settings``, or from a TOML file + environment + ``overrides``."""
        if settings is None:
            settings = Settings.load(config, **overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        # Locating only reads: a missing store directory is no gallery, and is not created.
        try:
            client = open_client(settings.store, settings.chroma_url, create=False)
        except GalleryNotFound:
            client = None
        gallery = None
        try:
            gallery = Gallery.open(client, settings.collection) if client is not None and settings.use_gallery else None
        except GalleryNotFound:
            gallery = None
        encoder_name = gallery.encoder_name if gallery else settings.encoder
        if gallery and settings.encoder and settings.encoder != gallery.encoder_name:
            encoder = create_encoder(settings.encoder)
            if encoder.name != gallery.encoder_name:
                raise EncoderMismatch(
                    f"gallery {gallery.name!r} was built with {gallery.encoder_name!r}, not "
                    f"{encoder.name!r}: drop --encoder or use another --collection"
                )
        gps_gallery = None
        if settings.use_gps_gallery and encoder_name and encoder_name.startswith("geoclip"):
            try:
                if client is None:
                    raise GalleryNotFound(f"no store at {settings.store}")
                gps_gallery = GpsGallery.open(client, settings.gps_collection)
            except GalleryNotFound:
                if gallery is None:
                    # Nothing else to retrieve from (the geoclip presets): build it, once. The
                    # one case where locating writes to the store, because the preset asks for it.
                    client = client or open_client(settings.store, settings.chroma_url)
                    gps_gallery = GpsGallery(build_gps_gallery(
                        client, name=settings.gps_collection, progress=_gps_progress))
        if gallery is None and gps_gallery is None and not settings.model:
            raise GalleryNotFound(
                f"nothing to locate with: no gallery {settings.collection!r} in the store and no "
                f"model configured. Build a gallery with `geoagent index SOURCE`, or pass --model"
            )
        encoder = create_encoder(encoder_name) if encoder_name else None
        cache = ResponseCache(Path(settings.cache_dir) / "responses.sqlite") if settings.cache_dir else None
        model = ModelClient(settings, cache) if settings.model else None
        examples = None
        if settings.few_shot != "none" and model is not None:
            if gallery is None:
                raise GalleryNotFound(
                    f"few-shot prompts show gallery photos: no gallery {settings.collection!r} in the store"
                )
            examples = FewShot(gallery, settings)
        return cls(
            Resources(
                settings=settings,
                prompt=load_prompt(settings.prompt),
                encoder=encoder,
                gallery=gallery,
                gps_gallery=gps_gallery,
                model=model,
                examples=examples,
            )
        )

    # ------------------------------------------------------------------ inputs

    def read(self, image: LocateInput) -> tuple[Image.Image, bytes | None, str]:
        """(decoded RGB image, original bytes or None, label) of a photo; ``ImageError`` if unusable."""
        if isinstance(image, str) and urlparse(image).scheme.lower() in ("http", "https"):
            raw = fetch_url(image, max_bytes=self.settings.url_max_bytes, timeout=self.settings.url_timeout)
            return load_image(raw), raw, image
        if isinstance(image, str) and "://" in image:
            raise ImageError(f"unsupported URL scheme in {image}: only http and https", "bad url")
        if isinstance(image, str | Path):
            path = Path(image)
            im = load_image(path)
            return im, path.read_bytes(), str(path)
        if isinstance(image, bytes):
            return load_image(image), image, f"<{len(image)} bytes>"
        return load_image(image), None, "<PIL image>"

    # ------------------------------------------------------------------ locate

    async def alocate(self, image: LocateInput, *, exclude_ids: Sequence[str] = ()) -> Prediction:
        """Locate one photo. Raises ``ImageError`` for an unreadable photo.

        ``exclude_ids``: gallery ids that are this photo (a benchmark item's id); with
        ``exclude_self_matches`` they, and copies found by hash or embedding, are never used.
        """
        started = time.perf_counter()
        im, raw, label = await asyncio.to_thread(self.read, image)
        state = ChainState(
            resources=self.resources, image=im, raw=raw, label=label, exclude_ids=frozenset(exclude_ids)
        )
        state = await self._chain.ainvoke(state)
        prediction = state.prediction
        assert prediction is not None
        prediction.timings = dict(state.timings)
        prediction.latency_s = round(time.perf_counter() - started, 4)
        return prediction

    async def alocate_many(
        self,
        images: Sequence[LocateInput],
        concurrency: int | None = None,
        on_done: Callable[[int, Prediction], None] | None = None,
    ) -> list[Prediction]:
        """Locate photos concurrently, in input order; a bad photo gives an ``error`` prediction.

        ``on_done(index, prediction)`` is called as each photo finishes (e.g. to write it out).
        """
        sem = asyncio.Semaphore(concurrency or self.settings.concurrency)

        async def one(index: int, image: LocateInput) -> Prediction:
            async with sem:
                try:
                    prediction = await self.alocate(image)
                except (ImageError, GeoagentError) as exc:
                    label = image if isinstance(image, str | Path) else type(image).__name__
                    prediction = Prediction(None, None, "error", error=str(exc), image=str(label))
            if on_done is not None:
                on_done(index, prediction)
            return prediction

        return list(await asyncio.gather(*(one(i, im) for i, im in enumerate(images))))

    def locate(self, image: LocateInput) -> Prediction:
        """Locate one photo (blocking)."""
        return _run(self.alocate(image))

    def locate_many(
        self,
        images: Sequence[LocateInput],
        concurrency: int | None = None,
        on_done: Callable[[int, Prediction], None] | None = None,
    ) -> list[Prediction]:
        """Locate photos concurrently (blocking), in input order; ``on_done`` as in ``alocate_many``."""
        return _run(self.alocate_many(images, concurrency, on_done))


def _gps_progress(done: int, total: int) -> None:
    """Building GeoCLIP's GPS gallery takes minutes the first time: say how far it got."""
    end = "\n" if done >= total else ""
    print(f"\rbuilding GeoCLIP's GPS gallery (first use): {done:,}/{total:,} coordinates",
          end=end, file=sys.stderr, flush=True)


def _run(coro):
    """``asyncio.run``, also from inside a running loop (e.g. Jupyter), via a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
