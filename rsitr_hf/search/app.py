"""A web page to search an image index (``rsitr-app``), on Gradio: type a query, see the images.

    rsitr-app --index INDEX_DIR [--model BASE --adapter ADAPTER] [--top_k 12] [--host 127.0.0.1]
        [--port 7860] [--share]

The index is one built by ``rsitr-search index`` (of images, or of scenes with ``--scenes``); its own model
(base and adapter) embeds the queries unless ``--model`` / ``--adapter`` name another, which must be the
same model. The page names the model and
the index, and has two tabs: **Text → images** (a caption-like query, the top-k images with rank, file and
cosine score) and **Image → images** (an uploaded image, the nearest indexed images). When the model is not
the one that built the index (another base, adapter or weights, even under the same names), the page says
so, naming both, and the search controls are disabled. For a scene index, each hit is the window found
(scene, pixel window and, when georeferenced, the latitude and longitude of its centre), and a second gallery
shows an overview of each scene with hits, their windows outlined and numbered by rank.

Needs Gradio (``pip install -e ".[app]"``). The page is served on ``--host`` (default 127.0.0.1, this
machine only); ``--share`` asks Gradio for a public link (needs the network).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import PIL.Image

from ..evaluation.inference import RetrievalModel
from ..utils.cli import command, command_parser, parse_arguments
from ..utils.errors import InputError
from ..utils.optional import require
from .errors import SearchError
from .index import ImageIndex, index_model, model_mismatch
from .query import Hit, hit_image, search_images, similar_images
from .scenes import outline_windows, scene_overview
from .spatial import Area, bbox_area

THUMBNAIL_SIZE = 256  # the longer side of gallery images, in pixels
MAX_TOP_K = 50
EXAMPLE_QUERY = "many planes parked at the airport"  # the empty query box shows it


def require_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    return require("gradio", "the web app", "gradio", "app")


class Answer(NamedTuple):
    """What the page shows for a query: ``gallery`` (thumbnail, caption "rank. file (score)") best first,
    ``summary`` (how many, for which query, the time taken on the server) and, for a scene index, ``scenes``:
    an overview of each scene with hits, the hits' windows outlined and numbered by rank."""

    gallery: list[tuple[PIL.Image.Image, str]]
    summary: str
    scenes: list[tuple[PIL.Image.Image, str]] | None = None


@dataclass
class SearchPage:
    """What the page searches: an index, the model embedding the queries, and ``problem`` (why this model
    cannot search this index, or ``None``)."""

    index: ImageIndex
    model: RetrievalModel
    index_dir: str
    problem: str | None = None
    overviews: dict[str, PIL.Image.Image] = field(default_factory=dict)  # reduced scenes, read once

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike, base_model: str | None = None, adapter: str | None = None
    ) -> SearchPage:
        index = ImageIndex.load(index_dir)
        model = index_model(index, base_model, adapter)
        return cls(index, model, str(index_dir), model_mismatch(index, model, index_dir))

    def header(self) -> str:
        """Markdown naming the model, the index and its search backend."""
        backend = self.index.backend()
        return (
            f"## rsitr-app: search {self.index.describe()}\n"
            f"**Model:** {self.model.identity.describe()}  \n"
            f"**Index:** `{self.index_dir}` ({'images' if self.index.tiling is None else 'scenes'} under "
            f"`{self.index.root}`, {backend})"
        )

    def text_query(self, query: str, top_k: int, bbox: str = "") -> Answer:
        """The answer to a text query: the ``top_k`` best images, captioned with rank, file and score (in a
        scene index, only windows meeting ``bbox``, ``minlon,minlat,maxlon,maxlat``, when given)."""
        self.check_usable()
        started = time.perf_counter()
        hits = search_images(self.index, self.model, [query], int(top_k), area=area_of(bbox))[0]
        return self.answer(hits, f"“{query}”", started)

    def image_query(self, image: PIL.Image.Image | None, top_k: int, bbox: str = "") -> Answer:
        """The answer to an image query: the ``top_k`` nearest indexed images (``bbox``: as for text)."""
        self.check_usable()
        if image is None:
            raise SearchError("upload an image to search with")
        started = time.perf_counter()
        hits = similar_images(self.index, self.model, image, int(top_k), area=area_of(bbox))
        return self.answer(hits, "the image", started)

    def check_usable(self) -> None:
        if self.problem is not None:
            raise SearchError(self.problem)

    def answer(self, hits: list[Hit], query: str, started: float) -> Answer:
        gallery = []
        for hit in hits:
            image = hit_image(self.index, hit)
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            gallery.append((image, f"{hit.rank}. {hit.describe()} ({hit.score:.3f})"))
        scenes = None if self.index.tiling is None else self.scene_views(hits)
        seconds = time.perf_counter() - started
        best = "best" if self.index.tiling is None else "best places"
        summary = f"{len(hits)} {best} of {self.index.describe()} for {query} ({1000 * seconds:.0f} ms)"
        if self.index.stale:
            summary += f"  \n**Warning:** {self.index.stale_note()}"
        return Answer(gallery, summary, scenes)

    def scene_views(self, hits: list[Hit]) -> list[tuple[PIL.Image.Image, str]]:
        """For each scene with hits (in order of its best): its overview with the hits' windows outlined."""
        views = []
        for scene in dict.fromkeys(hit.item for hit in hits):
            info = self.index.scenes[scene]
            if scene not in self.overviews:
                self.overviews[scene] = scene_overview(Path(self.index.root) / scene, info)
            windows = [(str(hit.rank), hit.window) for hit in hits if hit.item == scene]
            ranks = ", ".join(label for label, _ in windows)
            views.append((outline_windows(self.overviews[scene], info, windows), f"{scene}: hits {ranks}"))
        return views

    def shown(self, answer: Answer) -> tuple:
        """The answer as the page's outputs: with the scene overviews for a scene index."""
        return tuple(answer) if self.index.tiling is not None else tuple(answer[:2])


def area_of(bbox: str) -> Area | None:
    """The page's area box (``minlon,minlat,maxlon,maxlat``) as an area; empty: none."""
    if not bbox or not bbox.strip():
        return None
    try:
        return bbox_area(bbox.strip())
    except InputError as error:  # shown on the page
        raise SearchError(str(error)) from None


def area_box(gradio, page: SearchPage, elem_id: str) -> list:
    """For a scene index, a box for an area the hits must meet; else none."""
    if page.index.tiling is None:
        return []
    label = "Area: minlon,minlat,maxlon,maxlat (WGS84; empty: everywhere)"
    return [gradio.Textbox(label=label, elem_id=elem_id, interactive=page.problem is None)]


def shown_as_page_error(function, shown=lambda answer: answer):
    """``function`` with its answer passed through ``shown`` and a :class:`SearchError` turned into
    ``gradio.Error`` (a message on the page)."""
    gradio = require_gradio()

    def run(*arguments):
        try:
            return shown(function(*arguments))
        except SearchError as error:
            raise gradio.Error(str(error)) from None

    return run


def scene_gallery(gradio, page: SearchPage, elem_id: str) -> list:
    """For a scene index, the gallery of scene overviews (hits outlined) below the hits; else none."""
    if page.index.tiling is None:
        return []
    return [gradio.Gallery(label="Where in the scenes", columns=2, height="auto", elem_id=elem_id)]


def build_app(page: SearchPage, top_k: int = 12):
    """The Gradio ``Blocks`` of ``page`` (not launched)."""
    gradio = require_gradio()
    usable = page.problem is None
    with gradio.Blocks(title="rsitr-app") as blocks:
        gradio.Markdown(page.header(), elem_id="header")
        if not usable:
            gradio.Markdown(
                f"**This index cannot be searched with this model.** {page.problem}", elem_id="problem"
            )
        with gradio.Tab("Text → images"):
            with gradio.Row():
                query = gradio.Textbox(
                    label="Text query",
                    placeholder=EXAMPLE_QUERY,
                    elem_id="query",
                    scale=4,
                    interactive=usable,
                )
                text_k = gradio.Slider(1, MAX_TOP_K, value=top_k, step=1, label="Results", interactive=usable)
            text_area = area_box(gradio, page, "text_bbox")
            search = gradio.Button("Search", variant="primary", elem_id="search_text", interactive=usable)
            text_summary = gradio.Markdown(elem_id="text_summary")
            text_results = gradio.Gallery(
                label="Best matches", columns=6, height="auto", elem_id="text_results"
            )
            gradio.on(
                [query.submit, search.click],
                shown_as_page_error(page.text_query, page.shown),
                [query, text_k, *text_area],
                [text_results, text_summary, *scene_gallery(gradio, page, "text_scenes")],
                api_name="search_text",
            )
        with gradio.Tab("Image → images"):
            with gradio.Row():
                image = gradio.Image(
                    label="Image query", type="pil", elem_id="image_query", interactive=usable
                )
                image_k = gradio.Slider(
                    1, MAX_TOP_K, value=top_k, step=1, label="Results", interactive=usable
                )
            image_area = area_box(gradio, page, "image_bbox")
            similar = gradio.Button(
                "Find similar", variant="primary", elem_id="search_image", interactive=usable
            )
            image_summary = gradio.Markdown(elem_id="image_summary")
            image_results = gradio.Gallery(
                label="Nearest images", columns=6, height="auto", elem_id="image_results"
            )
            similar.click(
                shown_as_page_error(page.image_query, page.shown),
                [image, image_k, *image_area],
                [image_results, image_summary, *scene_gallery(gradio, page, "image_scenes")],
                api_name="search_image",
            )
    return blocks


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("--index", required=True, help="the index folder built by rsitr-search index")
    parser.add_argument("--model", help="base CLIP model (default: the index's)")
    parser.add_argument("--adapter", help="PEFT adapter (default: the index's)")
    parser.add_argument("--top_k", type=int, default=12, help=f"results shown at first (1 to {MAX_TOP_K})")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also ask Gradio for a public link (network)")
    args = parse_arguments(parser, argv)
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise InputError(f"--top_k: expected 1 to {MAX_TOP_K}, got {args.top_k}")
    require_gradio()
    page = SearchPage.open(args.index, args.model, args.adapter)
    if page.problem is not None:
        print(f"rsitr-app: warning: {page.problem}", file=sys.stderr)
    build_app(page, args.top_k).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
